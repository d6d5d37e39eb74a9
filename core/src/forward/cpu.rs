//! The CPU forward backend: the transformer of `var` and the decoder of `vae` over the arena.
//!
//! ```text
//! prepare   per row: AdaLN vectors (copied from an earlier row with the same label)
//!           input = SOS (step 0) | word_embed(area(f_hat, pn)) + lvl_pos (shared by an image's rows)
//!           → blocks (markov: this scale only | causal: + the row's KV cache slot)
//! logits    per row: head(LN(x)·(1 + scale) + shift) of tokens t0 .. t0 + m
//! decode    VQVAE decoder, whole image or row bands
//! ```

use super::{Chunk, Forward, Io, Step, TensorId};
use crate::arena::Arena;
use crate::error::{Error, Result};
use crate::generate::plan::Shape;
use crate::generate::{Compute, Plan, SampleOptions};
use crate::kernels::{linear, linear_scratch_len, LinearScratch};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::schedule::Schedule;
use crate::var::{ada_vectors, block_forward, head_logits, Kv, StepScratch};
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
            self.n * 2 * self.c
        }
    }
    /// Linear-kernel scratch: (f32 values, int8 values).
    fn lin_len(&self) -> (usize, usize) {
        let (fa, qa) = linear_scratch_len(self.chunk, self.c.max(self.f));
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
        /// Six AdaLN vectors of every block, per row.
        ada: [f32; s.rows * s.depth * 6 * s.c] = "AdaLN vectors (rows x depth x 6C)",
        /// Head scale and shift, per row.
        head_ada: [f32; s.rows * 2 * s.c] = "head scale/shift (rows x 2C)",
        /// Hidden states of every row.
        hidden: [f32; s.rows * s.n * s.c] = "hidden states (rows x tokens x C)",
        /// This scale's keys and values (Markov).
        kv: [f32; s.kv_scale_len()] = "keys, values of this scale (tokens x 2C, markov)",
        /// Modulated LayerNorm of a chunk.
        xn: [f32; s.chunk * s.c] = "modulated LN (chunk x C)",
        /// Queries of a chunk.
        q: [f32; s.chunk * s.c] = "queries (chunk x C)",
        /// Attention output of a chunk.
        att: [f32; s.chunk * s.c] = "attention out (chunk x C)",
        /// Branch output of a chunk.
        tmp: [f32; s.chunk * s.c] = "branch output (chunk x C)",
        /// FFN hidden of a chunk (also the causal K/V staging of a chunk).
        ffn: [f32; s.chunk * s.f.max(2 * s.c)] = "FFN hidden (chunk x F)",
        /// Attention scores, one row per token of a chunk (the tokens attend concurrently).
        scores: [f32; s.chunk * s.keys] = "attention scores (chunk x keys)",
        /// Per-row activation scales (int8) / f32 staging of the linear kernels.
        lin_f: [f32; s.lin_len().0] = "activation scales",
        /// Quantized activations.
        lin_q: [i8; s.lin_len().1] = "int8 activations",
        /// SiLU(class embedding) and the shared AdaLN output.
        ada_tmp: [f32; 7 * s.c] = "AdaLN condition tmp (7C)",
        /// The input map transposed to token-major.
        win: [f32; s.n * s.cv] = "word-embed input (tokens x Cvae)",
        /// Modulated LayerNorm of a head chunk.
        head_xn: [f32; s.chunk * s.c] = "head LN (chunk x C)",
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

        // AdaLN vectors of each row's condition (rows of the same label share them).
        let ada_len = depth * 6 * c;
        for (r, row) in step.rows.iter().enumerate() {
            match step.rows[..r].iter().position(|o| o.label == row.label) {
                Some(e) => {
                    b.ada
                        .copy_within(e * ada_len..(e + 1) * ada_len, r * ada_len);
                    b.head_ada
                        .copy_within(e * 2 * c..(e + 1) * 2 * c, r * 2 * c);
                }
                None => ada_vectors(
                    t,
                    c,
                    row.label as usize,
                    &mut b.ada[r * ada_len..(r + 1) * ada_len],
                    &mut b.head_ada[r * 2 * c..(r + 1) * 2 * c],
                    b.ada_tmp,
                    &mut lin,
                    par,
                ),
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

        // Blocks, row by row.
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
        for (r, row) in step.rows.iter().enumerate() {
            let x = &mut hidden[r * nmax * c..r * nmax * c + n * c];
            for (bi, blk) in t.blocks.iter().enumerate() {
                let ada = &b.ada[r * ada_len + bi * 6 * c..r * ada_len + (bi + 1) * 6 * c];
                let kv = if cache > 0 {
                    let len = cache * c;
                    let off = (bi * self.shape.rows + row.slot as usize) * len;
                    Kv::Causal {
                        k: &mut run.kv_k[off..off + len],
                        v: &mut run.kv_v[off..off + len],
                        begin: step.cache_begin,
                    }
                } else {
                    Kv::Markov
                };
                block_forward(blk, c, heads, eps, ada, x, n, kv, &mut st, par);
                probe.tensor(tensor("block", bi, r), x);
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
        for r in 0..step.rows.len() {
            let x = &b.hidden[(r * nmax + t0) * c..(r * nmax + t0 + m) * c];
            let o = &mut out[r * m * v..(r + 1) * m * v];
            head_logits(
                &self.model.weights.var,
                c,
                cfg.var.norm_eps,
                &b.head_ada[r * 2 * c..(r + 1) * 2 * c],
                x,
                m,
                b.head_xn,
                o,
                &mut lin,
                self.par,
            );
            probe.tensor(
                TensorId {
                    token: t0,
                    ..tensor("logits", 0, r)
                },
                o,
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
