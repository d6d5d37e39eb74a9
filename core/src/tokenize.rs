//! Image → latent → multi-scale tokens, and tokens → `f_hat` (`docs/SPEC.md` §3.4, §3.6):
//! the zero-shot side of the pipeline (reconstruction, editing sources, teacher forcing).

use crate::arena::{bytes_of, Arena};
use crate::error::{Error, Result};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::schedule::Schedule;
use crate::vq::{area_resize, nearest_code, VqDims, VqScratch};
use crate::{vae, Model};

arena_layout! {
    /// Buffers of the residual quantization loop (besides [`VqScratch`]).
    struct QuantizeBufs<'s>(d: &VqDims) {
        /// `f − f_hat` so far.
        rest: [f32; d.cv * d.p * d.p] = "residual f - f_hat (Cvae x P x P)",
        /// The residual at the step's size.
        z: [f32; d.cv * d.n] = "area(residual, pn) (Cvae x tokens)",
        /// One token's vector.
        zv: [f32; d.cv] = "one latent vector (Cvae)",
    }
}

/// Exact arena bytes of [`tokenize`] (which also encodes) on `sched`.
pub fn tokenize_bytes(model: &Model<'_>, sched: &Schedule) -> usize {
    let cfg = &model.config;
    let d = VqDims::new(cfg, sched);
    let own = QuantizeBufs::bytes(&d) + VqScratch::bytes(&d);
    own.max(vae::encoder_scratch_bytes(cfg) + bytes_of::<f32>(d.cv * d.p * d.p))
}

/// Exact arena bytes of [`fhat_from_tokens`] on `sched`.
pub fn fhat_from_tokens_bytes(model: &Model<'_>, sched: &Schedule) -> usize {
    VqScratch::bytes(&VqDims::new(&model.config, sched))
}

/// Checks the schedule, the arena size, the token buffer and every `Cvae × P × P` map.
fn check(
    model: &Model<'_>,
    sched: &Schedule,
    arena: usize,
    needed: usize,
    tokens: usize,
    maps: &[(&'static str, usize)],
) -> Result<()> {
    let cfg = &model.config;
    sched.validate(cfg)?;
    if arena < needed {
        return Err(Error::ArenaTooSmall {
            needed,
            given: arena,
        });
    }
    if tokens != sched.total_tokens() {
        return Err(Error::BadLength {
            what: "tokens",
            expected: sched.total_tokens(),
            found: tokens,
        });
    }
    let map = cfg.vae.cvae as usize * cfg.latent_side() * cfg.latent_side();
    for &(what, len) in maps {
        if len != map {
            return Err(Error::BadLength {
                what,
                expected: map,
                found: len,
            });
        }
    }
    Ok(())
}

/// [`check`] for [`tokenize`] and [`quantize_f`]: their arena, tokens, `f` and `f_hat`.
fn check_quantize(
    model: &Model<'_>,
    sched: &Schedule,
    arena: usize,
    tokens: usize,
    f: usize,
    f_hat: usize,
) -> Result<()> {
    let needed = tokenize_bytes(model, sched);
    check(
        model,
        sched,
        arena,
        needed,
        tokens,
        &[("f_hat", f_hat), ("f", f)],
    )
}

/// Encodes `image` (`3 × H × W` in [−1, 1]) and quantizes it on `sched`: writes the tokens of
/// every step, concatenated row-major (`sched.total_tokens()` values), the encoder output `f`
/// and the accumulated `f_hat` (both `Cvae × P × P`).
#[allow(clippy::too_many_arguments)]
pub fn tokenize(
    model: &Model<'_>,
    sched: &Schedule,
    image: &[f32],
    arena: &mut [u8],
    tokens: &mut [u32],
    f_out: &mut [f32],
    f_hat: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    let enc = model.weights.encoder.as_ref().ok_or(Error::NoEncoder)?;
    check_quantize(
        model,
        sched,
        arena.len(),
        tokens.len(),
        f_out.len(),
        f_hat.len(),
    )?;
    vae::encode(
        enc,
        &model.config,
        image,
        &mut Arena::new(arena)?,
        f_out,
        par,
    )?;
    quantize_f(model, sched, f_out, arena, tokens, f_hat, par)
}

/// Quantizes a latent `f` on `sched` (the residual loop of §3.4).
pub fn quantize_f(
    model: &Model<'_>,
    sched: &Schedule,
    f: &[f32],
    arena: &mut [u8],
    tokens: &mut [u32],
    f_hat: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    check_quantize(
        model,
        sched,
        arena.len(),
        tokens.len(),
        f.len(),
        f_hat.len(),
    )?;
    let d = VqDims::new(&model.config, sched);
    let (cv, p) = (d.cv, d.p);
    let mut ar = Arena::new(arena)?;
    let QuantizeBufs { rest, z, zv } = QuantizeBufs::take(&d, &mut ar)?;
    let mut vq = VqScratch::take(&d, &mut ar)?;
    rest.copy_from_slice(f);
    f_hat.iter_mut().for_each(|v| *v = 0.0);
    let embedding = model.weights.quant.embedding;
    let mut off = 0;
    for k in 0..sched.len() {
        let pn = sched.pn[k] as usize;
        let m = pn * pn;
        if pn == p {
            z[..cv * m].copy_from_slice(rest);
        } else {
            area_resize(rest, cv, p, pn, z);
        }
        for pos in 0..m {
            for ch in 0..cv {
                zv[ch] = z[ch * m + pos];
            }
            tokens[off + pos] = nearest_code(embedding, cv, zv);
        }
        vq.contribution(model, sched, k, &tokens[off..off + m], par);
        for ((fh, r), d) in f_hat.iter_mut().zip(rest.iter_mut()).zip(vq.contrib.iter()) {
            *fh += *d;
            *r -= *d;
        }
        off += m;
    }
    Ok(())
}

/// Rebuilds `f_hat` from the tokens of every step (concatenated row-major).
pub fn fhat_from_tokens(
    model: &Model<'_>,
    sched: &Schedule,
    tokens: &[u32],
    arena: &mut [u8],
    f_hat: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    let needed = fhat_from_tokens_bytes(model, sched);
    check(
        model,
        sched,
        arena.len(),
        needed,
        tokens.len(),
        &[("f_hat", f_hat.len())],
    )?;
    let cfg = &model.config;
    let v = cfg.vae.vocab_size;
    if let Some(&t) = tokens.iter().find(|&&t| t >= v) {
        return Err(Error::TokenOutOfRange { token: t, vocab: v });
    }
    let mut vq = VqScratch::take(&VqDims::new(cfg, sched), &mut Arena::new(arena)?)?;
    f_hat.iter_mut().for_each(|x| *x = 0.0);
    let mut off = 0;
    for k in 0..sched.len() {
        let m = sched.tokens(k);
        vq.accumulate(model, sched, k, &tokens[off..off + m], f_hat, par);
        off += m;
    }
    Ok(())
}
