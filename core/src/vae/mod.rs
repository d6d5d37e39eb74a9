//! VQVAE decoder and encoder (`docs/SPEC.md` §2): conv, GroupNorm, SiLU, ResBlocks, single-head
//! attention blocks, nearest ×2 upsampling and stride-2 downsampling.
//!
//! Activations rotate through three equally sized buffers (`a` holds the current map, see
//! `net`); the scratch each network needs is computed by [`decoder_scratch_bytes`] /
//! [`encoder_scratch_bytes`] from the config alone, from the same layout tables the buffers are
//! taken with.
//!
//! The decoder can also run in row bands ([`decode`] with `band_rows > 0`, see `band`):
//! everything at the latent resolution runs whole as above, the upsampled levels are streamed
//! `band_rows` output rows at a time through small ring buffers, with one statistics pass per
//! GroupNorm layer of the streamed part. The output is bit-identical to the whole-image decoder.

mod band;
mod net;

pub use band::MAX_BAND_NODES;

use crate::arena::Arena;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::{conv2d, conv_scratch_len, ConvScratch, Pad};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::weights::{Decoder, Encoder};
use net::{conv_same, Bufs};

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
    /// Bytes of the largest int8 conv input ([`crate::kernels::conv_scratch_len`] of a 3 × 3
    /// conv on the largest map, which bounds the 1 × 1 and strided ones of the same map).
    pub max_unfold: usize,
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
    let unfold = |c: usize, side: usize| conv_scratch_len(c, side, side, side, 3).0;
    let mut max_act = cv * p * p;
    let mut max_unfold = unfold(cv, p);
    let mut block_in = cfg.level_channels(nl - 1);
    for lvl in (0..nl).rev() {
        let side = p << (nl - 1 - lvl);
        let out = cfg.level_channels(lvl);
        max_act = max_act.max(block_in.max(out) * side * side);
        max_unfold = max_unfold.max(unfold(block_in.max(out), side));
        block_in = out;
    }
    // Encoder input side: the image, 3 channels then ch.
    let image_side = cfg.image_side();
    max_act = max_act.max(3 * image_side * image_side);
    max_unfold = max_unfold.max(unfold(3, image_side));
    let deep = cfg.level_channels(nl - 1);
    let attn = cfg.vae.using_sa || cfg.vae.using_mid_sa;
    let mut max_row = cv.max(3) * image_side;
    for lvl in 0..nl {
        max_row = max_row.max(cfg.level_channels(lvl) * image_side);
    }
    VaeSizes {
        max_row,
        max_unfold,
        max_act,
        qkv: if attn { 3 * deep * p * p } else { 0 },
        attn_tokens: if attn { p * p } else { 0 },
        image_side,
    }
}

fn is_int8(cfg: &ModelConfig) -> bool {
    cfg.weights == crate::config::WeightFormat::Int8
}

/// `len` for an int8 model's conv scratch, else 0 (the f32 conv needs none).
const fn int8_len(int8: bool, len: usize) -> usize {
    if int8 {
        len
    } else {
        0
    }
}

/// The int8 conv scratch over its three buffers, `None` for an f32 model.
fn conv_scratch<'s>(
    int8: bool,
    unfold: &'s mut [i8],
    qrow: &'s mut [i8],
    row_scale: &'s mut [f32],
) -> Option<ConvScratch<'s>> {
    int8.then_some(ConvScratch {
        unfold,
        qrow,
        row_scale,
    })
}

/// Sizes of the whole-image layout.
struct Whole {
    s: VaeSizes,
    int8: bool,
}

arena_layout! {
    /// Buffers of the whole-image decoder (`band_rows = 0`) and of the encoder.
    struct WholeBufs<'s>(w: &Whole) {
        /// Rotating map `a`.
        a: [f32; w.s.max_act] = "activation a (max channels x side x side)",
        /// Rotating map `b`.
        b: [f32; w.s.max_act] = "activation b (max channels x side x side)",
        /// Rotating map `c`.
        c: [f32; w.s.max_act] = "activation c (max channels x side x side)",
        /// Attention q, k, v.
        qkv: [f32; w.s.qkv] = "attention q, k, v (3 C_deep x P x P)",
        /// Attention scores of one query.
        scores: [f32; w.s.attn_tokens] = "attention scores (P x P)",
        /// Int8 conv: unfolded input.
        unfold: [i8; int8_len(w.int8, w.s.max_unfold)] =
            "int8 conv input (3 x max channels x side x side)",
        /// Int8 conv: one quantized input row.
        qrow: [i8; int8_len(w.int8, w.s.max_row)] = "int8 conv row (max channels x side)",
        /// Int8 conv: per-row activation scales.
        row_scale: [f32; int8_len(w.int8, w.s.image_side)] = "int8 conv row scales (side)",
        /// One output row, interleaved RGB.
        row: [f32; 3 * w.s.image_side] = "output row (side x RGB)",
    }
}

impl Whole {
    fn new(cfg: &ModelConfig) -> Whole {
        Whole {
            s: sizes(cfg),
            int8: is_int8(cfg),
        }
    }
}

/// Takes the whole-image buffers: the network and the output row.
fn take_whole<'s, 'p>(
    cfg: &ModelConfig,
    arena: &mut Arena<'s>,
    par: &'p dyn Parallel,
) -> Result<(Bufs<'s, 'p>, &'s mut [f32])> {
    let w = Whole::new(cfg);
    let t = WholeBufs::take(&w, arena)?;
    let cs = conv_scratch(w.int8, t.unfold, t.qrow, t.row_scale);
    Ok((
        Bufs::new(cfg, [t.a, t.b, t.c], t.qkv, t.scores, cs, par),
        t.row,
    ))
}

/// Whether [`decode`] streams bands for this `band_rows` (a VQVAE without upsampling decodes
/// whole either way).
fn banded(cfg: &ModelConfig, band_rows: usize) -> bool {
    band_rows > 0 && cfg.num_levels() > 1
}

/// Exact scratch bytes of [`decode`] with `band_rows` (0: whole image). A `band_rows` that
/// [`decode`] refuses (larger than the image side, or a VQVAE with more than
/// [`MAX_BAND_NODES`] streamed nodes), and any `band_rows` for a VQVAE without upsampling (where
/// banded and whole decoding are the same), give the whole-image figure.
pub fn decoder_scratch_bytes(cfg: &ModelConfig, band_rows: usize) -> usize {
    let band = if banded(cfg, band_rows) && band_rows <= cfg.image_side() {
        band::scratch_bytes(cfg, band_rows)
    } else {
        None
    };
    band.unwrap_or_else(|| encoder_scratch_bytes(cfg))
}

/// Names (with shapes) and arena bytes of a layout's buffers.
pub type BufferList = heapless::Vec<(&'static str, usize), 32>;

/// The buffers behind [`decoder_scratch_bytes`], in arena order, for listings. With bands, the
/// latent part's buffers are given back before the streamed part takes its own, so the rows sum
/// to more than the scratch.
pub fn decoder_buffers(cfg: &ModelConfig, band_rows: usize) -> BufferList {
    let band = if banded(cfg, band_rows) && band_rows <= cfg.image_side() {
        band::buffers(cfg, band_rows)
    } else {
        None
    };
    band.unwrap_or_else(|| WholeBufs::buffers(&Whole::new(cfg)).into_iter().collect())
}

/// Exact scratch bytes of [`encode`] (and of the whole-image decoder).
pub fn encoder_scratch_bytes(cfg: &ModelConfig) -> usize {
    WholeBufs::bytes(&Whole::new(cfg))
}

/// One [`decode`] call: what both decoders read, and where the rows go.
struct Job<'j, 'd> {
    d: &'j Decoder<'d>,
    cfg: &'j ModelConfig,
    f_hat: &'j [f32],
    clamp: bool,
    par: &'j dyn Parallel,
    sink: &'j mut dyn FnMut(usize, &[f32]),
}

impl Job<'_, '_> {
    /// Hands image row `y` (`side` pixels) to the sink: channel `ch` of the row is
    /// `channel(ch)`, interleaved to RGB in `row` and clamped when asked.
    fn emit<'x>(
        &mut self,
        row: &mut [f32],
        y: usize,
        side: usize,
        channel: impl Fn(usize) -> &'x [f32],
    ) {
        for ch in 0..3 {
            for (x, v) in channel(ch).iter().enumerate() {
                row[x * 3 + ch] = if self.clamp { v.clamp(-1.0, 1.0) } else { *v };
            }
        }
        (self.sink)(y, &row[..3 * side]);
    }
}

/// Decodes `f_hat` (`Cvae × P × P`) to an image, handing each finished row to `sink` as
/// interleaved RGB floats, in order, once each: `clamp(decoder(post_quant_conv(f_hat)), −1, 1)`,
/// or unclamped when `clamp` is false.
///
/// `band_rows = 0` decodes the whole image at once; `1..=image side` streams the upsampled levels
/// in bands of that many rows (bounded working set, see [`decoder_scratch_bytes`]), with a
/// bit-identical result. Anything larger is `Error::BadOption`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    d: &Decoder<'_>,
    cfg: &ModelConfig,
    f_hat: &[f32],
    arena: &mut Arena<'_>,
    clamp: bool,
    band_rows: usize,
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
    if band_rows > cfg.image_side() {
        return Err(Error::BadOption(
            "band_rows must be 0 (whole image) or at most the image side",
        ));
    }
    let mut job = Job {
        d,
        cfg,
        f_hat,
        clamp,
        par,
        sink,
    };
    if banded(cfg, band_rows) {
        band::decode(&mut job, arena, band_rows)
    } else {
        decode_whole(&mut job, arena)
    }
}

/// Decodes `job` whole: every level at full size on the rotating buffers.
fn decode_whole(job: &mut Job<'_, '_>, arena: &mut Arena<'_>) -> Result<()> {
    let (d, p) = (job.d, job.cfg.latent_side());
    let (mut bf, row) = take_whole(job.cfg, arena, job.par)?;
    bf.decode_latent(d, job.f_hat, p);
    let mut side = p;
    for (li, level) in d.levels.iter().enumerate() {
        if li > 0 {
            bf.level_blocks(level, side);
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
    bf.norm_to_b(false, &d.norm_out, d.norm_out.w.len(), side, true);
    bf.conv_to_c(true, &d.conv_out, side);
    let out = &*bf.c;
    for y in 0..side {
        job.emit(row, y, side, |ch| &out[(ch * side + y) * side..][..side]);
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
    let (mut bf, _) = take_whole(cfg, arena, par)?;
    let mut side = side0;
    conv_same(image, side, &e.conv_in, 1, bf.c, bf.cs.as_mut(), par);
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
    bf.norm_to_b(false, &e.norm_out, e.norm_out.w.len(), side, true);
    bf.conv_to_c(true, &e.conv_out, side);
    conv_same(bf.c, side, &e.quant_conv, 1, f, bf.cs.as_mut(), par);
    Ok(())
}
