//! The CPU forward backend: the transformer of `var` and the decoder of `vae` over the arena.
//!
//! ```text
//! prepare   AdaLN vectors of each distinct label (one pass over the AdaLN weights)
//!           per row: input = SOS (step 0) | word_embed(area(f_hat, pn)) + lvl_pos (shared by an
//!           image's rows)
//!           → blocks, every row through each block's Linears at once (attention: markov: the
//!           row's tokens of this scale | causal: + the row's KV cache slot)
//! logits    every row at once: head(LN(x)·(1 + scale) + shift) of tokens t0 .. t0 + m
//! decode    VQVAE decoder, whole image or row bands
//! ```

use super::{Chunk, Forward, Io, Step, TensorId, MAX_ROWS};
use crate::arena::Arena;
use crate::error::{Error, Result};
use crate::generate::plan::Shape;
use crate::generate::{Compute, Plan, SampleOptions};
use crate::kernels::{linear, linear_scratch_len, LinearScratch};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::schedule::Schedule;
use crate::var::{ada_vectors, block_forward, head_logits, Kv, Rows, StepScratch, Tap};
use crate::{vae, Model};

impl Shape {
    /// Floats of one KV cache (keys or values) over every block and slot.
    fn kv_len(&self) -> usize {
        self.depth * self.rows * self.cache * self.c
    }
    /// Floats of this scale's own keys and values (Markov; the cache serves causal).
    fn kv_scale_len(&self) -> usize {
        if self.cache > 0 {
            0
        } else {
            self.group * self.n * 2 * self.c
        }
    }
    /// Tokens of one chunk: `chunk` tokens of every row of a group.
    fn chunk_tokens(&self) -> usize {
        self.group * self.chunk
    }
    /// Linear-kernel scratch: (f32 values, int8 values).
    fn lin_len(&self) -> (usize, usize) {
        let (fa, qa) = linear_scratch_len(self.chunk_tokens(), self.c.max(self.f));
        let (fc, qc) = linear_scratch_len(self.n, self.cv);
        let q = if self.int8 { qa.max(qc) } else { 0 };
        (fa.max(fc).max(1), q)
    }
}

arena_layout! {
    /// What the CPU backend keeps for the whole run.
    pub(crate) struct CpuRun<'s>(s: &Shape) {
        /// L2-normalised keys of every block, slot and cached token.
        kv_k: [f32; s.kv_len()] = "KV cache keys (depth x slots x cache tokens x C)",
        /// Values of every block, slot and cached token.
        kv_v: [f32; s.kv_len()] = "KV cache values (depth x slots x cache tokens x C)",
    }
}

arena_layout! {
    /// What the CPU backend uses during one step (kept between `prepare` and `logits`).
    pub(crate) struct CpuStep<'s>(s: &Shape) {
        /// Six AdaLN vectors of every row, per block (a block's rows side by side).
        ada: [f32; s.depth * s.rows * 6 * s.c] = "AdaLN vectors (depth x rows x 6C)",
        /// Head scale and shift, per row.
        head_ada: [f32; s.rows * 2 * s.c] = "head scale/shift (rows x 2C)",
        /// Hidden states of every row.
        hidden: [f32; s.rows * s.n * s.c] = "hidden states (rows x tokens x C)",
        /// This scale's keys and values of every row of a group (Markov).
        kv: [f32; s.kv_scale_len()] = "keys, values of this scale (group x tokens x 2C, markov)",
        /// Modulated LayerNorm of a chunk (`chunk` tokens of every row of a group).
        xn: [f32; s.chunk_tokens() * s.c] = "modulated LN (group x chunk x C)",
        /// Queries of a chunk.
        q: [f32; s.chunk_tokens() * s.c] = "queries (group x chunk x C)",
        /// Attention output of a chunk.
        att: [f32; s.chunk_tokens() * s.c] = "attention out (group x chunk x C)",
        /// Branch output of a chunk.
        tmp: [f32; s.chunk_tokens() * s.c] = "branch output (group x chunk x C)",
        /// FFN hidden of a chunk (also the K/V staging of a chunk).
        ffn: [f32; s.chunk_tokens() * s.f.max(2 * s.c)] = "FFN hidden (group x chunk x F)",
        /// Attention scores, one row per token of a chunk (the tokens attend concurrently).
        scores: [f32; s.chunk_tokens() * s.keys] = "attention scores (group x chunk x keys)",
        /// Per-row activation scales (int8) / f32 staging of the linear kernels.
        lin_f: [f32; s.lin_len().0] = "activation scales",
        /// Quantized activations.
        lin_q: [i8; s.lin_len().1] = "int8 activations",
        /// SiLU(class embedding) and the shared AdaLN output of up to a group of labels.
        ada_tmp: [f32; s.group * 7 * s.c] = "AdaLN condition tmp (group x 7C)",
        /// The input map transposed to token-major.
        win: [f32; s.n * s.cv] = "word-embed input (tokens x Cvae)",
        /// Modulated LayerNorm of a head chunk (`chunk` tokens of every row of a group).
        head_xn: [f32; s.chunk_tokens() * s.c] = "head LN (group x chunk x C)",
    }
}

/// The reference backend: every op on the host, threads through a [`Parallel`].
pub struct CpuForward<'m, 'a> {
    model: &'m Model<'m>,
    par: &'m dyn Parallel,
    shape: Shape,
    run: CpuRun<'a>,
}

impl<'m, 'a> CpuForward<'m, 'a> {
    /// Takes the backend's run buffers (the KV cache) for `images` images from `ar`.
    pub fn new(
        model: &'m Model<'m>,
        opts: &SampleOptions,
        sched: &Schedule,
        images: usize,
        ar: &mut Arena<'a>,
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        Plan::batch(&model.config, opts, sched, images, Compute::Cpu)?;
        let shape = Shape::new(&model.config, opts, sched, images);
        Ok(CpuForward {
            model,
            par,
            shape,
            run: CpuRun::take(&shape, ar)?,
        })
    }

    pub(crate) fn decode_bytes(cfg: &crate::ModelConfig, s: &Shape) -> usize {
        vae::decoder_scratch_bytes(cfg, s.band_rows)
    }

    fn check(&self, step: &Step<'_>) -> Result<()> {
        let s = &self.shape;
        let bad = step.rows.len() > s.rows
            || step.tokens() > s.n
            || step.rows.iter().any(|r| r.slot as usize >= s.rows)
            || (step.k > 0
                && step.rows.iter().any(|r| {
                    (r.image as usize + 1) * step.input_stride > step.input.len()
                        || step.input_stride < s.cv * step.tokens()
                }));
        if bad {
            return Err(Error::WrongState("a step beyond the backend's plan"));
        }
        Ok(())
    }
}

impl Forward for CpuForward<'_, '_> {
    fn max_rows(&self) -> usize {
        self.shape.rows
    }

    fn prepare(&mut self, step: &Step<'_>, io: Io<'_>) -> Result<()> {
        let Io { scratch, probe } = io;
        self.check(step)?;
        let cfg = &self.model.config;
        let t = &self.model.weights.var;
        let par = self.par;
        let Shape {
            n: nmax,
            c,
            cv,
            depth,
            cache,
            group,
            ..
        } = self.shape;
        let mut ar = Arena::new(scratch)?;
        let b = CpuStep::take(&self.shape, &mut ar)?;
        let n = step.tokens();
        let heads = cfg.var.num_heads as usize;
        let eps = cfg.var.norm_eps;
        let pos0 = cfg.scale_begin(step.level);
        let lvl_pos = |tok: usize, i: usize| {
            t.lvl_embed[step.level * c + i] + t.pos_1lc[(pos0 + tok) * c + i]
        };
        let mut lin = LinearScratch {
            f: b.lin_f,
            q: b.lin_q,
        };

        // AdaLN vectors of each distinct label, computed into the first places of each block's
        // rows, then spread to every row of that label. A row's label is first seen at or before
        // the row (`label_at[r] <= r`), so spreading from the last row down reads no place that
        // was already overwritten.
        let nr = step.rows.len();
        let mut labels = [0u32; MAX_ROWS];
        let mut label_at = [0u8; MAX_ROWS];
        let mut distinct = 0;
        for (r, row) in step.rows.iter().enumerate() {
            label_at[r] = match labels[..distinct].iter().position(|l| *l == row.label) {
                Some(u) => u as u8,
                None => {
                    labels[distinct] = row.label;
                    distinct += 1;
                    (distinct - 1) as u8
                }
            };
        }
        let block_len = nr * 6 * c;
        for u0 in (0..distinct).step_by(group) {
            let u1 = distinct.min(u0 + group);
            ada_vectors(
                t,
                c,
                &labels[u0..u1],
                &mut b.ada[u0 * 6 * c..],
                block_len,
                &mut b.head_ada[u0 * 2 * c..],
                b.ada_tmp,
                &mut lin,
                par,
            );
        }
        for r in (0..nr).rev() {
            let u = label_at[r] as usize;
            if u != r {
                for bi in 0..depth {
                    let o = bi * block_len;
                    b.ada
                        .copy_within(o + u * 6 * c..o + (u + 1) * 6 * c, o + r * 6 * c);
                }
                b.head_ada
                    .copy_within(u * 2 * c..(u + 1) * 2 * c, r * 2 * c);
            }
        }

        // Input tokens: the class token at step 0, else word_embed of the image's input (the
        // rows of one image share it).
        let hidden = &mut *b.hidden;
        for (r, row) in step.rows.iter().enumerate() {
            let x = &mut hidden[r * nmax * c..r * nmax * c + n * c];
            if step.k == 0 {
                let label = row.label as usize;
                for tok in 0..n {
                    for i in 0..c {
                        x[tok * c + i] =
                            (t.class_emb[label * c + i] + t.pos_start[i]) + lvl_pos(tok, i);
                    }
                }
            } else if r > 0 && step.rows[r - 1].image == row.image {
                hidden.copy_within((r - 1) * nmax * c..((r - 1) * nmax + n) * c, r * nmax * c);
            } else {
                let input = &step.input[row.image as usize * step.input_stride..];
                for tok in 0..n {
                    for ch in 0..cv {
                        b.win[tok * cv + ch] = input[ch * n + tok];
                    }
                }
                linear(b.win, n, &t.word_embed, x, &mut lin, par);
                for tok in 0..n {
                    for i in 0..c {
                        x[tok * c + i] += lvl_pos(tok, i);
                    }
                }
            }
            let x = &hidden[r * nmax * c..r * nmax * c + n * c];
            probe.tensor(tensor("input", 0, r), x);
        }

        // Blocks, the rows of a group through each block at once.
        let mut st = StepScratch {
            kv: b.kv,
            xn: b.xn,
            q: b.q,
            att: b.att,
            tmp: b.tmp,
            ffn: b.ffn,
            chunk: self.shape.chunk,
            scores: b.scores,
            lin,
        };
        let run = &mut self.run;
        let slot_len = cache * c;
        for g0 in (0..nr).step_by(group) {
            let gn = group.min(nr - g0);
            let slot = |r: usize| step.rows[g0 + r].slot as usize * slot_len;
            for (bi, blk) in t.blocks.iter().enumerate() {
                let kv = if cache > 0 {
                    let len = self.shape.rows * slot_len;
                    Kv::Causal {
                        k: &mut run.kv_k[bi * len..(bi + 1) * len],
                        v: &mut run.kv_v[bi * len..(bi + 1) * len],
                        begin: step.cache_begin,
                        slot: &slot,
                    }
                } else {
                    Kv::Markov
                };
                let ada0 = bi * block_len + g0 * 6 * c;
                let rows = Rows {
                    x: &mut hidden[g0 * nmax * c..(g0 + gn) * nmax * c],
                    stride: nmax * c,
                    count: gn,
                    n,
                    ada: &b.ada[ada0..ada0 + gn * 6 * c],
                };
                let mut tap = Tap {
                    probe: &mut *probe,
                    layer: bi,
                    row0: g0,
                };
                block_forward(blk, c, heads, eps, rows, kv, &mut st, &mut tap, par);
                for r in g0..g0 + gn {
                    probe.tensor(
                        tensor("block", bi, r),
                        &hidden[r * nmax * c..r * nmax * c + n * c],
                    );
                }
            }
        }
        Ok(())
    }

    fn logits(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> Result<()> {
        let (Chunk { t0, m, out }, Io { scratch, probe }) = (chunk, io);
        self.check(step)?;
        let Shape { n: nmax, c, v, .. } = self.shape;
        if m > self.shape.chunk || t0 + m > step.tokens() || out.len() < step.rows.len() * m * v {
            return Err(Error::WrongState(
                "a logits chunk beyond the backend's plan",
            ));
        }
        let cfg = &self.model.config;
        let mut ar = Arena::new(scratch)?;
        let b = CpuStep::take(&self.shape, &mut ar)?;
        let mut lin = LinearScratch {
            f: b.lin_f,
            q: b.lin_q,
        };
        let (nr, group) = (step.rows.len(), self.shape.group);
        for g0 in (0..nr).step_by(group) {
            let gn = group.min(nr - g0);
            head_logits(
                &self.model.weights.var,
                c,
                cfg.var.norm_eps,
                &b.head_ada[g0 * 2 * c..],
                (&b.hidden[g0 * nmax * c..], nmax * c, gn),
                (t0, m),
                b.head_xn,
                &mut out[g0 * m * v..(g0 + gn) * m * v],
                &mut lin,
                &mut Tap {
                    probe: &mut *probe,
                    layer: 0,
                    row0: g0,
                },
                self.par,
            );
        }
        for r in 0..nr {
            probe.tensor(
                TensorId {
                    token: t0,
                    ..tensor("logits", 0, r)
                },
                &out[r * m * v..(r + 1) * m * v],
            );
        }
        Ok(())
    }

    fn decode(
        &mut self,
        f_hat: &[f32],
        scratch: &mut [u8],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        vae::decode(
            &self.model.weights.decoder,
            &self.model.config,
            f_hat,
            &mut Arena::new(scratch)?,
            true,
            self.shape.band_rows,
            self.par,
            sink,
        )
    }
}

fn tensor(op: &'static str, layer: usize, row: usize) -> TensorId {
    TensorId {
        op,
        layer,
        row,
        token: 0,
    }
}
