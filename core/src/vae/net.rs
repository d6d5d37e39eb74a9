//! The rotating-buffer network shared by the whole-image decoder, the latent part of the
//! row-band decoder and the encoder: activations rotate through three equally sized maps (`a`
//! holds the current one).

use crate::config::ModelConfig;
use crate::kernels::{conv2d, group_norm, softmax, ConvScratch, Pad};
use crate::parallel::Parallel;
use crate::weights::{AttnBlock, Conv, Decoder, DecoderLevel, Mid, Norm, ResBlock};

/// Three rotating activation maps, the attention scratch and the int8 conv scratch.
pub(super) struct Bufs<'s, 'p> {
    /// The current map.
    pub(super) a: &'s mut [f32],
    /// Normalised input of the next conv (and the upsampled map).
    pub(super) b: &'s mut [f32],
    /// Conv output; becomes `a` on [`Bufs::rotate`].
    pub(super) c: &'s mut [f32],
    qkv: &'s mut [f32],
    scores: &'s mut [f32],
    pub(super) cs: Option<ConvScratch<'s>>,
    groups: usize,
    eps: f32,
    par: &'p dyn Parallel,
}

impl<'s, 'p> Bufs<'s, 'p> {
    /// The network's buffers over maps `[a, b, c]`, with the GroupNorm settings of `cfg`.
    pub(super) fn new(
        cfg: &ModelConfig,
        [a, b, c]: [&'s mut [f32]; 3],
        qkv: &'s mut [f32],
        scores: &'s mut [f32],
        cs: Option<ConvScratch<'s>>,
        par: &'p dyn Parallel,
    ) -> Self {
        Bufs {
            a,
            b,
            c,
            qkv,
            scores,
            cs,
            groups: cfg.vae.gn_groups as usize,
            eps: cfg.vae.gn_eps,
            par,
        }
    }
}

/// Stride-1 conv of a `side × side` map `x` into `y`, zero padding `pad` on every edge.
pub(super) fn conv_same(
    x: &[f32],
    side: usize,
    conv: &Conv<'_>,
    pad: usize,
    y: &mut [f32],
    cs: Option<&mut ConvScratch<'_>>,
    par: &dyn Parallel,
) {
    conv2d(x, side, side, conv, 1, Pad::same(pad), y, cs, par);
}

impl Bufs<'_, '_> {
    /// Same-size conv of `a` (or of `b` when `from_b`) into `c`.
    pub(super) fn conv_to_c(&mut self, from_b: bool, conv: &Conv<'_>, side: usize) {
        let x: &[f32] = if from_b { self.b } else { self.a };
        conv_same(
            x,
            side,
            conv,
            conv.k / 2,
            self.c,
            self.cs.as_mut(),
            self.par,
        );
    }

    /// GroupNorm (then SiLU when `silu`) of the first `channels` channels of `a` (or of `c` when
    /// `from_c`) into `b`.
    pub(super) fn norm_to_b(
        &mut self,
        from_c: bool,
        norm: &Norm<'_>,
        channels: usize,
        side: usize,
        silu: bool,
    ) {
        let hw = side * side;
        let x: &[f32] = if from_c { self.c } else { self.a };
        let (groups, eps) = (self.groups, self.eps);
        group_norm(
            &x[..channels * hw],
            self.b,
            channels,
            hw,
            groups,
            eps,
            norm,
            silu,
            self.par,
        );
    }

    /// The conv output `c` becomes the current map `a`.
    pub(super) fn rotate(&mut self) {
        core::mem::swap(&mut self.a, &mut self.c);
    }

    /// ResBlock on `a` (result in `a`): two GroupNorm+SiLU+conv layers plus the shortcut.
    pub(super) fn res_block(&mut self, rb: &ResBlock<'_>, side: usize) {
        let hw = side * side;
        let (cin, cout) = (rb.conv1.cin, rb.conv1.cout);
        self.norm_to_b(false, &rb.norm1, cin, side, true);
        self.conv_to_c(true, &rb.conv1, side);
        self.norm_to_b(true, &rb.norm2, cout, side, true);
        self.conv_to_c(true, &rb.conv2, side);
        if let Some(nin) = &rb.nin_shortcut {
            conv_same(self.a, side, nin, 0, self.b, self.cs.as_mut(), self.par);
            for (o, s) in self.c[..cout * hw].iter_mut().zip(self.b.iter()) {
                *o += *s;
            }
        } else {
            for (o, s) in self.c[..cout * hw].iter_mut().zip(self.a.iter()) {
                *o += *s;
            }
        }
        self.rotate();
    }

    /// Single-head attention over the `side × side` tokens of `a` (result in `a`).
    pub(super) fn attn_block(&mut self, ab: &AttnBlock<'_>, side: usize) {
        let hw = side * side;
        let c = ab.qkv.cin;
        self.norm_to_b(false, &ab.norm, c, side, false);
        conv_same(
            self.b,
            side,
            &ab.qkv,
            0,
            self.qkv,
            self.cs.as_mut(),
            self.par,
        );
        let (q, kv) = self.qkv.split_at(c * hw);
        let (k, v) = kv.split_at(c * hw);
        let ratio = 1.0 / libm::sqrtf(c as f32);
        let scores = &mut self.scores[..hw];
        for i in 0..hw {
            scores.iter_mut().for_each(|s| *s = 0.0);
            for ch in 0..c {
                let qv = q[ch * hw + i];
                for (s, kv) in scores.iter_mut().zip(&k[ch * hw..(ch + 1) * hw]) {
                    *s += qv * *kv;
                }
            }
            scores.iter_mut().for_each(|s| *s *= ratio);
            softmax(scores);
            for ch in 0..c {
                self.b[ch * hw + i] = crate::kernels::dot(&v[ch * hw..(ch + 1) * hw], scores);
            }
        }
        conv_same(
            self.b,
            side,
            &ab.proj_out,
            0,
            self.c,
            self.cs.as_mut(),
            self.par,
        );
        for (o, s) in self.c[..c * hw].iter_mut().zip(self.a.iter()) {
            *o += *s;
        }
        self.rotate();
    }

    /// The middle section: ResBlock, optional attention, ResBlock.
    pub(super) fn mid(&mut self, m: &Mid<'_>, side: usize) {
        self.res_block(&m.block_1, side);
        if let Some(a) = &m.attn_1 {
            self.attn_block(a, side);
        }
        self.res_block(&m.block_2, side);
    }
}

impl Bufs<'_, '_> {
    /// Everything at the latent resolution: `post_quant_conv`, `conv_in`, the middle section and
    /// the ResBlocks (and attention) of the deepest level; the result is left in `a`.
    pub(super) fn decode_latent(&mut self, d: &Decoder<'_>, f_hat: &[f32], p: usize) {
        conv_same(
            f_hat,
            p,
            &d.post_quant_conv,
            1,
            self.c,
            self.cs.as_mut(),
            self.par,
        );
        self.rotate();
        self.conv_to_c(false, &d.conv_in, p);
        self.rotate();
        self.mid(&d.mid, p);
        if let Some(level) = d.levels.first() {
            self.level_blocks(level, p);
        }
    }

    /// The ResBlocks (and attention) of one decoder level, at `side`.
    pub(super) fn level_blocks(&mut self, level: &DecoderLevel<'_>, side: usize) {
        for (j, rb) in level.blocks.iter().enumerate() {
            self.res_block(rb, side);
            if let Some(a) = level.attns.get(j) {
                self.attn_block(a, side);
            }
        }
    }
}
