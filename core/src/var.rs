//! The VAR transformer, one scale at a time (`docs/SPEC.md` §5).
//!
//! Reads like `llama2.c`'s forward: AdaLN vectors are computed once per condition
//! ([`ada_vectors`]); [`block_forward`] runs one AdaLN self-attention block over one scale's
//! tokens of every row of a step; [`head_logits`] turns tokens' hidden states into 4096-way
//! logits. Every Linear sees the tokens of all rows stacked, so a block's weights stream once
//! per chunk for the whole batch, not once per row; what differs per row (its AdaLN vectors,
//! its keys and values, its residual) stays per row. Attention is block-diagonal (Markov: keys
//! are this scale's tokens of the same row) or block-causal (keys and values of every earlier
//! scale come from the row's cache slot in the arena).

use crate::forward::{Probe, TensorId};
use crate::kernels::attention::{attend_row, KeyValues};
use crate::kernels::{gelu_row, layer_norm, linear, linear_shared, silu, Isa, LinearScratch};
use crate::parallel::{for_rows, Parallel, SharedMut};
use crate::weights::{AdaLn, Block, ByLabel, Transformer};

/// Default tokens per row in an FFN / head chunk: bounds the FFN hidden activation to
/// `rows × chunk × F` floats and the logits to `rows × chunk × V`. Any chunk gives identical
/// results (every kernel works per token); smaller chunks trade speed for arena bytes. 256 holds
/// a whole 16 × 16 scale, so there the attention's q and k/v share one quantization of their
/// input and every Linear sees the largest GEMM (d16: 9.1 s → 8.5 s per image, the same peak
/// RSS, because the whole-image decoder's arena is larger anyway).
pub const DEFAULT_CHUNK: usize = 256;

/// Index of each AdaLN vector in a row's `6C` block vector.
const GAMMA1: usize = 0;
const GAMMA2: usize = 1;
const SCALE1: usize = 2;
const SCALE2: usize = 3;
const SHIFT1: usize = 4;
const SHIFT2: usize = 5;

/// Scratch of one scale step. Only this scale's keys and values (Markov) span all tokens;
/// everything else is one chunk: up to `chunk` tokens of every row, stacked row after row.
pub struct StepScratch<'s> {
    /// Keys and values of this scale, `rows × n × 2C` (Markov; empty for causal, which uses the
    /// cache).
    pub kv: &'s mut [f32],
    /// Modulated LayerNorm of a chunk, `rows × chunk × C`.
    pub xn: &'s mut [f32],
    /// Queries of a chunk, `rows × chunk × C`.
    pub q: &'s mut [f32],
    /// Attention output of a chunk, `rows × chunk × C`.
    pub att: &'s mut [f32],
    /// Branch output of a chunk, `rows × chunk × C`.
    pub tmp: &'s mut [f32],
    /// FFN hidden of a chunk, `rows × chunk × F` (also the K/V staging, `rows × chunk × 2C`).
    pub ffn: &'s mut [f32],
    /// Tokens per row in a chunk.
    pub chunk: usize,
    /// Attention scores, `rows × chunk × keys` floats: one row per token of a chunk, so the
    /// tokens of a chunk can attend concurrently.
    pub scores: &'s mut [f32],
    /// Linear-kernel scratch.
    pub lin: LinearScratch<'s>,
}

/// The rows one block pass runs over: every CFG row of every image of a step.
pub struct Rows<'x> {
    /// Hidden states: row `r`'s `n × C` tokens at `r · stride` (updated in place).
    pub x: &'x mut [f32],
    /// Floats between two rows' hidden states (at least `n × C`).
    pub stride: usize,
    /// Number of rows.
    pub count: usize,
    /// Tokens of each row.
    pub n: usize,
    /// This block's AdaLN vectors, row `r`'s `6C` at `r · 6C`: γ1, γ2, scale1, scale2, shift1,
    /// shift2.
    pub ada: &'x [f32],
}

/// Where [`block_forward`] and [`head_logits`] report the inputs of their modulated Linears
/// (when [`Probe::linear_inputs`]): the block index and the step row of the pass's first row.
pub struct Tap<'p> {
    /// Receives `"qkv_in"`, `"fc1_in"` or `"head_in"` tensors, a row's tokens of a chunk each.
    pub probe: &'p mut dyn Probe,
    /// Block index (0 for the head).
    pub layer: usize,
    /// Step row of the pass's row 0.
    pub row0: usize,
}

impl Tap<'_> {
    /// Reports the span's modulated LayerNorm `xn`, row by row (a row's tokens are contiguous).
    fn report(&mut self, op: &'static str, sp: Span, xn: &[f32], c: usize) {
        if !self.probe.linear_inputs() {
            return;
        }
        for (r, data) in xn[..sp.len() * c].chunks_exact(sp.m * c).enumerate() {
            let id = TensorId {
                op,
                layer: self.layer,
                row: self.row0 + r,
                token: sp.t0,
            };
            self.probe.tensor(id, data);
        }
    }
}

/// Keys and values this scale attends to.
pub enum Kv<'k> {
    /// Block-diagonal: only this scale's own keys and values, of the same row.
    Markov,
    /// Block-causal: row `r`'s cache starts at float `slot(r)` of `k` and `v` (`tokens × C`
    /// each); this scale's normalised keys and values are written at its token `begin` and
    /// attention covers its tokens `0 .. begin + n`.
    Causal {
        /// Key cache (L2-normalised keys) of every slot.
        k: &'k mut [f32],
        /// Value cache of every slot.
        v: &'k mut [f32],
        /// First cache position of this scale.
        begin: usize,
        /// First float of row `r`'s cache in `k` and `v`.
        slot: &'k (dyn Fn(usize) -> usize + Sync),
    },
}

/// Computes, for each of the distinct conditions `labels` (`L` of them), the six AdaLN vectors
/// of every block and the head's scale/shift; every Linear runs once over the `L` conditions.
/// Condition `u`'s `6C` vector of block `i` goes to `ada[(i · block_stride + u · 6C)..]`, its
/// head vector to `head[u · 2C..]`. `tmp` needs `7C · L` floats.
#[allow(clippy::too_many_arguments)]
pub fn ada_vectors(
    t: &Transformer<'_>,
    c: usize,
    labels: &[u32],
    ada: &mut [f32],
    block_stride: usize,
    head: &mut [f32],
    tmp: &mut [f32],
    lin: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    let l = labels.len();
    let (cond, shared) = tmp.split_at_mut(l * c);
    for (row, &label) in cond.chunks_exact_mut(c).zip(labels) {
        let label = label as usize;
        for (o, v) in row.iter_mut().zip(&t.class_emb[label * c..(label + 1) * c]) {
            *o = silu(*v);
        }
    }
    let shared = &mut shared[..l * 6 * c];
    if let Some(sh) = &t.shared_ada_lin {
        by_label(sh, cond, labels, shared, lin, par);
    }
    for (i, b) in t.blocks.iter().enumerate() {
        let out = &mut ada[i * block_stride..i * block_stride + l * 6 * c];
        match &b.ada {
            AdaLn::Linear(f) => by_label(f, cond, labels, out, lin, par),
            AdaLn::Shared(gss) => {
                for (o, s) in out.chunks_exact_mut(6 * c).zip(shared.chunks_exact(6 * c)) {
                    for ((o, g), s) in o.iter_mut().zip(gss.iter()).zip(s) {
                        *o = *g + *s;
                    }
                }
            }
        }
    }
    by_label(&t.head_nm, cond, labels, &mut head[..l * 2 * c], lin, par);
}

/// `out` (`labels.len()` rows) = the AdaLN Linear `f` of `cond` (`SiLU(class_emb[label])` per
/// row), or the rows of its table.
fn by_label(
    f: &ByLabel<'_>,
    cond: &[f32],
    labels: &[u32],
    out: &mut [f32],
    lin: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    match f {
        ByLabel::Linear(w) => linear(cond, labels.len(), w, out, lin, par),
        ByLabel::Table { rows, out_dim } => {
            for (o, &label) in out.chunks_exact_mut(*out_dim).zip(labels) {
                rows.row_into(label as usize, *out_dim, o);
            }
        }
    }
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

/// Where a chunk's tokens are: `m` tokens from `t0` of each of `rows` rows, row `r`'s token `t`
/// at float `r · stride + t · C` of the hidden states. Stacked token `i` is row `i / m`'s token
/// `t0 + i % m`.
#[derive(Clone, Copy)]
struct Span {
    stride: usize,
    t0: usize,
    m: usize,
    rows: usize,
}

impl Span {
    /// Stacked tokens.
    fn len(&self) -> usize {
        self.rows * self.m
    }
    /// Row of stacked token `i`.
    fn row(&self, i: usize) -> usize {
        i / self.m
    }
    /// First float of stacked token `i` in the hidden states.
    fn at(&self, i: usize, c: usize) -> usize {
        self.row(i) * self.stride + (self.t0 + i % self.m) * c
    }
}

/// Part `k` (a `C` vector) of row `r`'s AdaLN vectors, `width` vectors per row.
fn part(ada: &[f32], r: usize, width: usize, k: usize, c: usize) -> &[f32] {
    let at = (r * width + k) * c;
    &ada[at..at + c]
}

/// `y = LN(x)·(1 + scale) + shift` for the span's tokens (stacked into `y`), each with its
/// row's `scale` and `shift` (parts `ks`, `kb` of `width` per row in `ada`).
#[allow(clippy::too_many_arguments)]
fn modulate(
    x: &[f32],
    sp: Span,
    y: &mut [f32],
    c: usize,
    eps: f32,
    ada: &[f32],
    (width, ks, kb): (usize, usize, usize),
    par: &dyn Parallel,
) {
    each_row(par, &mut y[..sp.len() * c], c, 2 * c, &|i, row| {
        let at = sp.at(i, c);
        layer_norm(&x[at..at + c], row, c, eps);
        let r = sp.row(i);
        let (scale, shift) = (part(ada, r, width, ks, c), part(ada, r, width, kb, c));
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

/// One AdaLN self-attention block over `rows.n` tokens of every row (updated in place).
///
/// Works in chunks of up to `chunk` tokens of every row: first every token's key and value
/// (from the block's input), then per chunk its queries, attention, projection and residual,
/// then per chunk the FFN. Each Linear takes the chunk's tokens of all rows at once (a Linear
/// computes every token row on its own, so stacking changes no bit); every kernel works per
/// token, so the result depends neither on the chunk size nor on the other rows.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    b: &Block<'_>,
    c: usize,
    heads: usize,
    eps: f32,
    rows: Rows<'_>,
    kv: Kv<'_>,
    s: &mut StepScratch<'_>,
    tap: &mut Tap<'_>,
    par: &dyn Parallel,
) {
    let hd = c / heads;
    let Rows {
        x,
        stride,
        count,
        n,
        ada,
    } = rows;
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
    let span = |t0: usize| Span {
        stride,
        t0,
        m: ch.min(n - t0),
        rows: count,
    };
    let q_rows = b.mat_qkv.rows(0, c);
    let kv_rows = b.mat_qkv.rows(c, 3 * c);
    // One chunk holds every token: step 2's queries come from step 1's LayerNorm output.
    let single_chunk = n <= ch;
    let (mut cache, begin) = match kv {
        Kv::Markov => (None, 0),
        Kv::Causal { k, v, begin, slot } => (Some((k, v, slot)), begin),
    };

    // 1. Keys (L2-normalised) and values of every token, from the block's input, staged in
    //    `ffn` and copied to the row's place.
    let mut t0 = 0;
    while t0 < n {
        let sp = span(t0);
        modulate(x, sp, xn, c, eps, ada, (6, SCALE1, SHIFT1), par);
        tap.report("qkv_in", sp, xn, c);
        let out = &mut ffn[..sp.len() * 2 * c];
        if single_chunk {
            // The queries come from the same LayerNorm output: quantized once for both.
            let q = &mut q[..sp.len() * c];
            linear_shared(xn, sp.len(), [(&kv_rows, out), (&q_rows, q)], lin, par);
        } else {
            linear(xn, sp.len(), &kv_rows, out, lin, par);
        }
        let out = &mut ffn[..sp.len() * 2 * c];
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
        for (i, row) in out.chunks_exact(2 * c).enumerate() {
            let (r, tok) = (sp.row(i), t0 + i % sp.m);
            match &mut cache {
                None => {
                    let at = (r * n + tok) * 2 * c;
                    kv_buf[at..at + 2 * c].copy_from_slice(row);
                }
                Some((k, v, slot)) => {
                    let at = slot(r) + (begin + tok) * c;
                    k[at..at + c].copy_from_slice(&row[..c]);
                    v[at..at + c].copy_from_slice(&row[c..]);
                }
            }
        }
        t0 += sp.m;
    }
    // Keys/values of row `r`: its own of this scale (Markov) or its cache up to this scale
    // (causal), as (keys, values, first float of row `r`, stride between tokens).
    let (keys, vals, kstride, nkeys): (&[f32], &[f32], usize, usize) = match &cache {
        None => (&kv_buf[..], &kv_buf[c..], 2 * c, n),
        Some((k, v, _)) => (&k[..], &v[..], c, begin + n),
    };
    let row_at = |r: usize| match &cache {
        None => r * n * 2 * c,
        Some((_, _, slot)) => slot(r),
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
        let sp = span(t0);
        let sm = sp.len();
        if !single_chunk {
            modulate(x, sp, xn, c, eps, ada, (6, SCALE1, SHIFT1), par);
            linear(xn, sm, &q_rows, q, lin, par);
        }
        each_row(par, &mut q[..sm * c], c, 2 * c, &|_, row| {
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
        // Tokens attend independently, each with its own row of scores, to its row's keys.
        let q = &q[..sm * c];
        let scores = SharedMut::new(&mut scores[..sm * nkeys]);
        let isa = Isa::active();
        each_row(par, &mut att[..sm * c], c, 2 * c * nkeys, &|t, out_row| {
            // SAFETY: row `t` of the scores belongs to the call for token `t` only.
            let scores = unsafe { scores.slice(t * nkeys, nkeys) };
            let base = row_at(sp.row(t));
            let kvs = KeyValues {
                keys: &keys[base..],
                vals: &vals[base..],
                stride: kstride,
                n: nkeys,
            };
            let q = &q[t * c..(t + 1) * c];
            attend_row(isa, q, &kvs, heads, hd, logit_scale, scores, out_row);
        });
        linear(att, sm, &b.proj, tmp, lin, par);
        residual(x, sp, tmp, ada, GAMMA1, c, par);
        t0 += sp.m;
    }

    // 3. Per chunk: FFN and residual.
    let f = b.fc1.out_dim;
    let isa = Isa::active();
    let mut t0 = 0;
    while t0 < n {
        let sp = span(t0);
        let sm = sp.len();
        modulate(x, sp, xn, c, eps, ada, (6, SCALE2, SHIFT2), par);
        tap.report("fc1_in", sp, xn, c);
        linear(xn, sm, &b.fc1, ffn, lin, par);
        each_row(par, &mut ffn[..sm * f], f, f, &|_, row| {
            gelu_row(isa, row);
        });
        linear(ffn, sm, &b.fc2, tmp, lin, par);
        residual(x, sp, tmp, ada, GAMMA2, c, par);
        t0 += sp.m;
    }
}

/// `x += branch · γ` for the span's tokens (stacked in `branch`), each with its row's γ (part
/// `kg` of its AdaLN vectors).
fn residual(
    x: &mut [f32],
    sp: Span,
    branch: &[f32],
    ada: &[f32],
    kg: usize,
    c: usize,
    par: &dyn Parallel,
) {
    let shared = SharedMut::new(x);
    for_rows(par, sp.len(), 2 * c, &|lo, hi| {
        for i in lo..hi {
            // SAFETY: distinct stacked tokens are distinct tokens of the hidden states
            // (`t0 + m ≤ n` and `n × C ≤ stride`), and `for_rows` hands each to one call.
            let xr = unsafe { shared.slice(sp.at(i, c), c) };
            let gamma = part(ada, sp.row(i), 6, kg, c);
            for ((xv, tv), g) in xr.iter_mut().zip(&branch[i * c..(i + 1) * c]).zip(gamma) {
                *xv += *tv * *g;
            }
        }
    });
}

/// Logits of tokens `t0 .. t0 + m` of each of `rows` rows (row `r`'s hidden states at
/// `r · stride` of `x`): `head(LN(x)·(1 + scale) + shift)`, with row `r`'s scale and shift at
/// `head_ada[r · 2C..]`, in one pass over the head's weights. `xn` needs `rows·m·C` floats,
/// `logits` `rows·m·V` (row after row).
#[allow(clippy::too_many_arguments)]
pub fn head_logits(
    t: &Transformer<'_>,
    c: usize,
    eps: f32,
    head_ada: &[f32],
    (x, stride, rows): (&[f32], usize, usize),
    (t0, m): (usize, usize),
    xn: &mut [f32],
    logits: &mut [f32],
    lin: &mut LinearScratch<'_>,
    tap: &mut Tap<'_>,
    par: &dyn Parallel,
) {
    let sp = Span {
        stride,
        t0,
        m,
        rows,
    };
    modulate(x, sp, xn, c, eps, head_ada, (2, 0, 1), par);
    tap.report("head_in", sp, xn, c);
    linear(xn, sp.len(), &t.head, logits, lin, par);
}
