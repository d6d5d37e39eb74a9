//! Multiply-accumulate counts of a sampling run, from the model and the plan alone: what a
//! schedule, guidance or refinement choice costs, independent of the machine.
//!
//! Counted: every Linear and conv (one MAC per weight use), attention scores and weighted sums.
//! Not counted: norms, activations, softmax, interpolation and sampling (all O(activations)).

use crate::config::Attention;
use crate::generate::SampleOptions;
use crate::schedule::Schedule;
use crate::weights::{AdaLn, AttnBlock, Conv, Decoder, Mid, ResBlock};
use crate::Model;

/// MACs of one image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Macs {
    /// Transformer (AdaLN vectors, embeddings, blocks, head), over both CFG rows and every
    /// refinement pass.
    pub transformer: u64,
    /// VQVAE decoder (including `post_quant_conv`).
    pub decoder: u64,
}

impl Macs {
    /// Sum of both parts.
    pub fn total(&self) -> u64 {
        self.transformer + self.decoder
    }
}

/// MACs of sampling one image with `opts` on `sched` (refinement passes counted as run, i.e.
/// an upper bound when a policy picks no token and the pass is skipped).
pub fn sample_macs(model: &Model<'_>, opts: &SampleOptions, sched: &Schedule) -> Macs {
    let cfg = &model.config;
    let c = cfg.var.embed_dim as u64;
    let f = cfg.var.ffn_hidden as u64;
    let v = cfg.vae.vocab_size as u64;
    let cv = cfg.vae.cvae as u64;
    let depth = cfg.var.depth as u64;
    let steps = sched.len();
    let causal = opts.attention == Attention::Causal;
    // AdaLN per CFG row: each block's 6C (with shared AdaLN counted per block, as the shared
    // Linear's share), the head's 2C; nothing where a per-label table replaces the Linear.
    let var = &model.weights.var;
    let ada_macs: u64 = var
        .blocks
        .iter()
        .map(|b| match (&b.ada, &var.shared_ada_lin) {
            (AdaLn::Linear(f), _) | (AdaLn::Shared(_), Some(f)) => f.macs(),
            (AdaLn::Shared(_), None) => 0,
        })
        .sum::<u64>()
        + var.head_nm.macs();
    let mut t = 0u64;
    let mut seen = 0u64;
    for k in 0..steps {
        let n = sched.tokens(k) as u64;
        let s = opts.settings(k, steps);
        let rows: u64 = if opts.rows() == 1 {
            1
        } else if causal || s.guidance != 0.0 {
            2
        } else {
            1
        };
        let keys = if causal { seen + n } else { n };
        let embed = if k == 0 { 0 } else { n * cv * c };
        let block = n * c * 3 * c + 2 * n * keys * c + n * c * c + 2 * n * c * f;
        let head = n * c * v;
        let pass = embed + rows * (depth * block + head);
        // AdaLN vectors (every block's 6C and the head's 2C) for each planned CFG row, once per
        // step (they live in the step scratch).
        let ada = opts.rows() as u64 * ada_macs;
        t += ada + pass * (1 + s.refine as u64);
        seen += n;
    }
    Macs {
        transformer: t,
        decoder: decoder_macs(&model.weights.decoder, cfg.latent_side()),
    }
}

fn conv(c: &Conv<'_>, side: usize) -> u64 {
    (c.cout * c.cin * c.k * c.k * side * side) as u64
}

fn res_block(r: &ResBlock<'_>, side: usize) -> u64 {
    conv(&r.conv1, side)
        + conv(&r.conv2, side)
        + r.nin_shortcut.as_ref().map_or(0, |s| conv(s, side))
}

fn attn(a: &AttnBlock<'_>, side: usize) -> u64 {
    let hw = (side * side) as u64;
    conv(&a.qkv, side) + conv(&a.proj_out, side) + 2 * hw * hw * a.qkv.cin as u64
}

fn mid(m: &Mid<'_>, side: usize) -> u64 {
    res_block(&m.block_1, side)
        + m.attn_1.as_ref().map_or(0, |a| attn(a, side))
        + res_block(&m.block_2, side)
}

/// MACs of one decode from a `p × p` latent.
pub fn decoder_macs(d: &Decoder<'_>, p: usize) -> u64 {
    let mut m = conv(&d.post_quant_conv, p) + conv(&d.conv_in, p) + mid(&d.mid, p);
    let mut side = p;
    for level in &d.levels {
        for rb in &level.blocks {
            m += res_block(rb, side);
        }
        for a in &level.attns {
            m += attn(a, side);
        }
        if let Some(up) = &level.upsample {
            side *= 2;
            m += conv(up, side);
        }
    }
    m + conv(&d.conv_out, side)
}
