//! VQVAE decoder and encoder (`VAR_SPEC.md` §2): conv, GroupNorm, SiLU, ResBlocks, single-head
//! attention blocks, nearest ×2 upsampling and stride-2 downsampling.
//!
//! Activations rotate through three equally sized buffers (`a` holds the current map); the
//! scratch each network needs is computed by [`decoder_scratch_bytes`] /
//! [`encoder_scratch_bytes`] from the config alone.

use crate::arena::{bytes_of, Arena};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::{conv2d, group_norm, softmax, ConvScratch, Pad};
use crate::parallel::Parallel;
use crate::weights::{AttnBlock, Conv, Decoder, Encoder, Mid, ResBlock};

struct Bufs<'s, 'p> {
    a: &'s mut [f32],
    b: &'s mut [f32],
    c: &'s mut [f32],
    qkv: &'s mut [f32],
    scores: &'s mut [f32],
    cs: Option<ConvScratch<'s>>,
    groups: usize,
    eps: f32,
    par: &'p dyn Parallel,
}

/// Largest activation (values) and attention sizes of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeSizes {
    /// Values of the largest activation map.
    pub max_act: usize,
    /// Values of the attention q,k,v map (`3C · hw` at the attention level), 0 without attention.
    pub qkv: usize,
    /// Tokens of the attention level (`hw`).
    pub attn_tokens: usize,
    /// Image side.
    pub image_side: usize,
    /// Values of the widest conv input row (`channels × side`), for the int8 row buffer.
    pub max_row: usize,
}

/// Maps a decoder value in [−1, 1] to an 8-bit channel: `round(((v + 1) / 2) · 255)`, the same
/// on every target (used by the host PNG writer and the firmware checksum).
pub fn to_rgb8(v: f32) -> u8 {
    libm::roundf(((v.clamp(-1.0, 1.0) + 1.0) * 0.5) * 255.0) as u8
}

fn sizes(cfg: &ModelConfig) -> VaeSizes {
    let nl = cfg.num_levels();
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    let mut max_act = cv * p * p;
    let mut block_in = cfg.level_channels(nl - 1);
    for lvl in (0..nl).rev() {
        let side = p << (nl - 1 - lvl);
        let out = cfg.level_channels(lvl);
        max_act = max_act.max(block_in.max(out) * side * side);
        block_in = out;
    }
    // Encoder input side: the image, 3 channels then ch.
    let image_side = cfg.image_side();
    max_act = max_act.max(3 * image_side * image_side);
    let deep = cfg.level_channels(nl - 1);
    let attn = cfg.vae.using_sa || cfg.vae.using_mid_sa;
    let mut max_row = cv.max(3) * image_side;
    for lvl in 0..nl {
        max_row = max_row.max(cfg.level_channels(lvl) * image_side);
    }
    VaeSizes {
        max_row,
        max_act,
        qkv: if attn { 3 * deep * p * p } else { 0 },
        attn_tokens: if attn { p * p } else { 0 },
        image_side,
    }
}

fn any_int8(cfg: &ModelConfig) -> bool {
    cfg.weights == crate::config::WeightFormat::Int8
}

/// Exact scratch bytes of [`decode`] (and of [`encode`]: both use the same layout).
pub fn decoder_scratch_bytes(cfg: &ModelConfig) -> usize {
    let s = sizes(cfg);
    let mut b =
        3 * bytes_of::<f32>(s.max_act) + bytes_of::<f32>(s.qkv) + bytes_of::<f32>(s.attn_tokens);
    if any_int8(cfg) {
        b += bytes_of::<i8>(3 * s.max_act)
            + bytes_of::<i8>(s.max_row)
            + bytes_of::<f32>(s.image_side);
    }
    b + bytes_of::<f32>(3 * s.image_side)
}

/// Exact scratch bytes of [`encode`].
pub fn encoder_scratch_bytes(cfg: &ModelConfig) -> usize {
    decoder_scratch_bytes(cfg)
}

fn take_bufs<'s, 'p>(
    cfg: &ModelConfig,
    arena: &mut Arena<'s>,
    par: &'p dyn Parallel,
) -> Result<(Bufs<'s, 'p>, &'s mut [f32])> {
    let s = sizes(cfg);
    let a = arena.take::<f32>(s.max_act)?;
    let b = arena.take::<f32>(s.max_act)?;
    let c = arena.take::<f32>(s.max_act)?;
    let qkv = arena.take::<f32>(s.qkv)?;
    let scores = arena.take::<f32>(s.attn_tokens)?;
    let cs = if any_int8(cfg) {
        Some(ConvScratch {
            unfold: arena.take::<i8>(3 * s.max_act)?,
            qrow: arena.take::<i8>(s.max_row)?,
            row_scale: arena.take::<f32>(s.image_side)?,
        })
    } else {
        None
    };
    let row = arena.take::<f32>(3 * s.image_side)?;
    Ok((
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
        },
        row,
    ))
}

impl Bufs<'_, '_> {
    /// Same-size conv of `a` (or of `b` when `from_b`) into `c`.
    fn conv_to_c(&mut self, from_b: bool, conv: &Conv<'_>, side: usize) {
        let x: &[f32] = if from_b { self.b } else { self.a };
        let pad = Pad::same(conv.k / 2);
        conv2d(
            x,
            side,
            side,
            conv,
            1,
            pad,
            self.c,
            self.cs.as_mut(),
            self.par,
        );
    }

    fn rotate(&mut self) {
        core::mem::swap(&mut self.a, &mut self.c);
    }

    fn res_block(&mut self, rb: &ResBlock<'_>, side: usize) {
        let hw = side * side;
        let (cin, cout) = (rb.conv1.cin, rb.conv1.cout);
        group_norm(
            &self.a[..cin * hw],
            self.b,
            cin,
            hw,
            self.groups,
            self.eps,
            &rb.norm1,
            true,
        );
        self.conv_to_c(true, &rb.conv1, side);
        group_norm(
            &self.c[..cout * hw],
            self.b,
            cout,
            hw,
            self.groups,
            self.eps,
            &rb.norm2,
            true,
        );
        self.conv_to_c(true, &rb.conv2, side);
        if let Some(nin) = &rb.nin_shortcut {
            let (a, b) = (&*self.a, &mut *self.b);
            conv2d(
                a,
                side,
                side,
                nin,
                1,
                Pad::same(0),
                b,
                self.cs.as_mut(),
                self.par,
            );
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

    fn attn_block(&mut self, ab: &AttnBlock<'_>, side: usize) {
        let hw = side * side;
        let c = ab.qkv.cin;
        group_norm(
            &self.a[..c * hw],
            self.b,
            c,
            hw,
            self.groups,
            self.eps,
            &ab.norm,
            false,
        );
        conv2d(
            self.b,
            side,
            side,
            &ab.qkv,
            1,
            Pad::same(0),
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
        conv2d(
            self.b,
            side,
            side,
            &ab.proj_out,
            1,
            Pad::same(0),
            self.c,
            self.cs.as_mut(),
            self.par,
        );
        for (o, s) in self.c[..c * hw].iter_mut().zip(self.a.iter()) {
            *o += *s;
        }
        self.rotate();
    }

    fn mid(&mut self, m: &Mid<'_>, side: usize) {
        self.res_block(&m.block_1, side);
        if let Some(a) = &m.attn_1 {
            self.attn_block(a, side);
        }
        self.res_block(&m.block_2, side);
    }
}

/// Decodes `f_hat` (`Cvae × P × P`) to an image, handing each finished row to `sink` as
/// interleaved RGB floats: `clamp(decoder(post_quant_conv(f_hat)), −1, 1)`, or unclamped when
/// `clamp` is false.
pub fn decode(
    d: &Decoder<'_>,
    cfg: &ModelConfig,
    f_hat: &[f32],
    arena: &mut Arena<'_>,
    clamp: bool,
    par: &dyn Parallel,
    sink: &mut dyn FnMut(usize, &[f32]),
) -> Result<()> {
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    if f_hat.len() != cv * p * p {
        return Err(Error::BadLength {
            what: "f_hat",
            expected: cv * p * p,
            found: f_hat.len(),
        });
    }
    let (mut bf, row) = take_bufs(cfg, arena, par)?;
    conv2d(
        f_hat,
        p,
        p,
        &d.post_quant_conv,
        1,
        Pad::same(1),
        bf.c,
        bf.cs.as_mut(),
        par,
    );
    bf.rotate();
    bf.conv_to_c(false, &d.conv_in, p);
    bf.rotate();
    bf.mid(&d.mid, p);
    let mut side = p;
    for level in &d.levels {
        for (j, rb) in level.blocks.iter().enumerate() {
            bf.res_block(rb, side);
            if let Some(a) = level.attns.get(j) {
                bf.attn_block(a, side);
            }
        }
        if let Some(up) = &level.upsample {
            let ch = up.cin;
            let s2 = side * 2;
            for cc in 0..ch {
                for y in 0..s2 {
                    for x in 0..s2 {
                        bf.b[(cc * s2 + y) * s2 + x] = bf.a[(cc * side + y / 2) * side + x / 2];
                    }
                }
            }
            side = s2;
            bf.conv_to_c(true, up, side);
            bf.rotate();
        }
    }
    let c0 = d.norm_out.w.len();
    let hw = side * side;
    group_norm(
        &bf.a[..c0 * hw],
        bf.b,
        c0,
        hw,
        bf.groups,
        bf.eps,
        &d.norm_out,
        true,
    );
    bf.conv_to_c(true, &d.conv_out, side);
    for y in 0..side {
        for x in 0..side {
            for ch in 0..3 {
                let v = bf.c[(ch * side + y) * side + x];
                row[x * 3 + ch] = if clamp { v.clamp(-1.0, 1.0) } else { v };
            }
        }
        sink(y, &row[..3 * side]);
    }
    Ok(())
}

/// Encodes an image (`3 × H × W`, values in [−1, 1]) to `f = quant_conv(encoder(x))`
/// (`Cvae × P × P`).
pub fn encode(
    e: &Encoder<'_>,
    cfg: &ModelConfig,
    image: &[f32],
    arena: &mut Arena<'_>,
    f: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    let side0 = cfg.image_side();
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    if image.len() != 3 * side0 * side0 {
        return Err(Error::BadLength {
            what: "image",
            expected: 3 * side0 * side0,
            found: image.len(),
        });
    }
    if f.len() != cv * p * p {
        return Err(Error::BadLength {
            what: "f",
            expected: cv * p * p,
            found: f.len(),
        });
    }
    let (mut bf, _) = take_bufs(cfg, arena, par)?;
    let mut side = side0;
    conv2d(
        image,
        side,
        side,
        &e.conv_in,
        1,
        Pad::same(1),
        bf.c,
        bf.cs.as_mut(),
        par,
    );
    bf.rotate();
    for level in &e.levels {
        for (j, rb) in level.blocks.iter().enumerate() {
            bf.res_block(rb, side);
            if let Some(a) = level.attns.get(j) {
                bf.attn_block(a, side);
            }
        }
        if let Some(down) = &level.downsample {
            let pad = Pad {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1,
            };
            conv2d(bf.a, side, side, down, 2, pad, bf.c, bf.cs.as_mut(), par);
            bf.rotate();
            side /= 2;
        }
    }
    bf.mid(&e.mid, side);
    let c = e.norm_out.w.len();
    let hw = side * side;
    group_norm(
        &bf.a[..c * hw],
        bf.b,
        c,
        hw,
        bf.groups,
        bf.eps,
        &e.norm_out,
        true,
    );
    bf.conv_to_c(true, &e.conv_out, side);
    conv2d(
        bf.c,
        side,
        side,
        &e.quant_conv,
        1,
        Pad::same(1),
        f,
        bf.cs.as_mut(),
        par,
    );
    Ok(())
}
