//! Zero-shot tasks on a model with an encoder (`docs/SPEC.md` §10): reconstruction, inpainting /
//! outpainting with a keep mask, class-conditional editing and super-resolution.
//!
//! Every task is: image → encoder → multi-scale tokens → (sampling with some tokens forced) →
//! decoder. Inpainting forces the source tokens where the keep mask, resized to each step, is
//! above 0.5 (the official rule); super-resolution forces every token of the coarse steps that a
//! low-resolution input determines, and samples the rest.

use crate::{decode_png_rgb_sized, open_png, rgb_image, sample_image, HostError, Image, Tick};
use srdd_core::aligned::AlignedBytes;
use srdd_core::edit::EditHook;
use srdd_core::generate::{Both, Generator, Guidance, Plan, SampleOptions, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::resample::ResamplePolicy;
use srdd_core::tokenize::{tokenize, tokenize_bytes};
use srdd_core::{vae, Model, Schedule};

/// An image as the model's input: `3 × H × W`, values in [−1, 1].
pub fn to_model_input(img: &Image) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    let mut x = vec![0f32; 3 * w * h];
    for y in 0..h {
        for xx in 0..w {
            for c in 0..3 {
                x[(c * h + y) * w + xx] = img.rgb[(y * w + xx) * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    x
}

/// PSNR in dB between two RGB8 images of the same size (over `mask` pixels when given).
pub fn psnr(a: &Image, b: &Image, mask: Option<&[bool]>) -> f64 {
    let mut se = 0f64;
    let mut n = 0usize;
    for (i, (x, y)) in a.rgb.iter().zip(&b.rgb).enumerate() {
        if mask.is_some_and(|m| !m[i / 3]) {
            continue;
        }
        let d = *x as f64 - *y as f64;
        se += d * d;
        n += 1;
    }
    if n == 0 {
        return f64::NAN;
    }
    let mse = se / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

fn check_model(model: &Model<'_>) -> Result<(), HostError> {
    if model.weights.encoder.is_none() {
        return Err(HostError::NoEncoder);
    }
    Ok(())
}

fn check_size(what: &'static str, img: &Image, side: usize) -> Result<(), HostError> {
    check_side(what, side, img.width, img.height)
}

/// [`HostError::ImageSize`] unless `width × height` is `side × side`.
fn check_side(
    what: &'static str,
    side: usize,
    width: usize,
    height: usize,
) -> Result<(), HostError> {
    if width != side || height != side {
        return Err(HostError::ImageSize {
            what,
            expected: side,
            width,
            height,
        });
    }
    Ok(())
}

/// Reads the input image of a zero-shot task on `model` (reconstruct, edit): the model must
/// have an encoder and the PNG must be the model's size, both checked before any pixel is
/// decoded (the size from the PNG header).
pub fn read_model_image(model: &Model<'_>, path: &std::path::Path) -> Result<Image, HostError> {
    let (file, name) = open_png(path)?;
    decode_model_image(model, file, &name)
}

/// [`read_model_image`] on PNG bytes from `reader`; `name` labels errors. (Also the entry point
/// of the `edit_upscale` fuzz target.)
pub fn decode_model_image(
    model: &Model<'_>,
    reader: impl std::io::Read,
    name: &str,
) -> Result<Image, HostError> {
    check_model(model)?;
    let side = model.config.image_side();
    decode_png_rgb_sized(reader, name, |w, h| check_side("image", side, w, h))
}

/// The multi-scale tokens of `img` (the model's size) on `sched`, and the `f_hat` they give.
pub fn tokenize_image(
    model: &Model<'_>,
    sched: &Schedule,
    img: &Image,
    par: &dyn Parallel,
) -> Result<(Vec<u32>, Vec<f32>), HostError> {
    check_model(model)?;
    let cfg = &model.config;
    check_size("image", img, cfg.image_side())?;
    let (cv, p) = (cfg.vae.cvae as usize, cfg.latent_side());
    let mut arena = AlignedBytes::zeroed(tokenize_bytes(model, sched));
    let mut toks = vec![0u32; sched.total_tokens()];
    let (mut f, mut f_hat) = (vec![0f32; cv * p * p], vec![0f32; cv * p * p]);
    tokenize(
        model,
        sched,
        &to_model_input(img),
        arena.as_bytes_mut(),
        &mut toks,
        &mut f,
        &mut f_hat,
        par,
    )?;
    Ok((toks, f_hat))
}

/// The multi-scale tokens of `img` (the model's size) on `sched`.
pub fn tokens_of(
    model: &Model<'_>,
    sched: &Schedule,
    img: &Image,
    par: &dyn Parallel,
) -> Result<Vec<u32>, HostError> {
    Ok(tokenize_image(model, sched, img, par)?.0)
}

fn decode_fhat(model: &Model<'_>, f_hat: &[f32], par: &dyn Parallel) -> Result<Image, HostError> {
    let cfg = &model.config;
    let mut arena = AlignedBytes::zeroed(vae::decoder_scratch_bytes(cfg, 0));
    let mut ar = srdd_core::arena::Arena::new(arena.as_bytes_mut())?;
    let d = &model.weights.decoder;
    Ok(rgb_image(cfg.image_side(), |sink| {
        vae::decode(d, cfg, f_hat, &mut ar, true, 0, par, sink)
    })?)
}

/// Encode → tokens → `f_hat` → decode (the tokenizer's `f_hat` is the sum of the tokens'
/// contributions, bit for bit what `fhat_from_tokens` gives).
pub fn reconstruct(
    model: &Model<'_>,
    sched: &Schedule,
    img: &Image,
    par: &dyn Parallel,
) -> Result<Image, HostError> {
    let (_, f_hat) = tokenize_image(model, sched, img, par)?;
    decode_fhat(model, &f_hat, par)
}

/// Samples with `source` tokens forced where `keep` (`P × P`, 1 = keep) says so, at every step.
#[allow(clippy::too_many_arguments)]
pub fn sample_forced(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    source: &[u32],
    keep: &[f32],
    policy: &mut dyn ResamplePolicy,
    par: &dyn Parallel,
    on_step: &mut dyn FnMut(),
) -> Result<Image, HostError> {
    let n = sched.max_tokens();
    let (mut resized, mut force) = (vec![0f32; n], vec![false; n]);
    let p = model.config.latent_side();
    let mut hook = Both(
        EditHook::new(keep, p, source, &mut resized, &mut force),
        Tick(on_step),
    );
    Ok(sample_image(model, opts, sched, &mut hook, policy, par)?)
}

/// Teacher forcing that scores: forces `source` at every step it covers and sums the
/// log-softmax of each forced token under the conditional logits the model gave before the draw.
struct ScoreForced<'a> {
    source: &'a [u32],
    /// Offset of each step's first token in `source`.
    offsets: Vec<usize>,
    log_likelihood: f64,
}

impl StepHook for ScoreForced<'_> {
    fn logits(&mut self, k: usize, t: usize, cond: &[f32]) {
        let Some(&token) = self.offsets.get(k).and_then(|o| self.source.get(o + t)) else {
            return;
        };
        // log-softmax in f64: the sums of many small differences decide the class.
        let max = cond.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = cond
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        self.log_likelihood += cond[token as usize] as f64 - lse;
    }
    fn force(&mut self, k: usize, pn: usize, tokens: &mut [u32]) {
        let Some(&o) = self.offsets.get(k) else {
            return;
        };
        for (i, t) in tokens.iter_mut().enumerate().take(pn * pn) {
            if let Some(&s) = self.source.get(o + i) {
                *t = s;
            }
        }
    }
}

/// Teacher-forced log-likelihood (natural log, summed over tokens) of the first `steps` steps of
/// `tokens` under each class of `labels`: the model as its own classifier. Guidance and
/// refinement are off (one conditional branch per step); the options otherwise follow `opts`.
pub fn class_log_likelihoods(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    tokens: &[u32],
    steps: usize,
    labels: &[u32],
    par: &dyn Parallel,
) -> Result<Vec<f64>, HostError> {
    let steps = steps.min(sched.len());
    let offsets: Vec<usize> = (0..steps)
        .scan(0, |o, k| {
            let at = *o;
            *o += sched.tokens(k);
            Some(at)
        })
        .collect();
    let mut out = Vec::with_capacity(labels.len());
    for &label in labels {
        let o = SampleOptions {
            label,
            cfg: 0.0,
            guidance: Guidance::Off,
            refine: 0,
            table: None,
            ..opts
        };
        let plan = Plan::new(&model.config, &o, sched)?;
        let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
        let mut gen = Generator::with_parallel(model, o, sched.clone(), arena.as_bytes_mut(), par)?;
        let mut hook = ScoreForced {
            source: tokens,
            offsets: offsets.clone(),
            log_likelihood: 0.0,
        };
        // The steps after the scored ones cannot change the score: stop there.
        for _ in 0..steps {
            gen.step(&mut hook)?;
        }
        out.push(hook.log_likelihood);
    }
    Ok(out)
}

/// The class (not the null class) under which the first `steps` steps of `tokens` are most
/// likely ([`class_log_likelihoods`]), with every class's log-likelihood.
pub fn auto_class(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    tokens: &[u32],
    steps: usize,
    par: &dyn Parallel,
) -> Result<(u32, Vec<f64>), HostError> {
    let labels: Vec<u32> = (0..model.config.var.num_classes).collect();
    let ll = class_log_likelihoods(model, opts, sched, tokens, steps, &labels, par)?;
    // Ties go to the lower label; NaN never wins.
    let best = (0..labels.len())
        .filter(|&i| !ll[i].is_nan())
        .fold(None, |b: Option<usize>, i| match b {
            Some(j) if ll[j] >= ll[i] => Some(j),
            _ => Some(i),
        })
        .ok_or_else(|| HostError::Option("--class auto: the model has no classes".into()))?;
    Ok((labels[best], ll))
}

/// Copies every kept pixel (`generate[i] == false`) of `src` into `out`, byte for byte.
pub fn paste_back(out: &mut Image, src: &Image, generate: &[bool]) {
    for (i, g) in generate.iter().enumerate() {
        if !g {
            out.rgb[i * 3..i * 3 + 3].copy_from_slice(&src.rgb[i * 3..i * 3 + 3]);
        }
    }
}

/// Chessboard (Chebyshev) distance of every pixel of a `width`-wide pixel grid to the nearest
/// kept pixel (`generate[i] == false`): 0 on kept pixels, `max(|dx|, |dy|)` elsewhere, and
/// `u32::MAX` everywhere when nothing is kept. Exact: the two-pass transform with unit weights on
/// all 8 neighbours computes the chessboard metric exactly, in O(pixels).
pub fn seam_distance(generate: &[bool], width: usize) -> Vec<u32> {
    let height = generate.len().checked_div(width).unwrap_or(0);
    let mut d: Vec<u32> = generate
        .iter()
        .map(|&g| if g { u32::MAX } else { 0 })
        .collect();
    let at = |d: &[u32], y: isize, x: isize| -> u32 {
        if y < 0 || x < 0 || y as usize >= height || x as usize >= width {
            u32::MAX
        } else {
            d[y as usize * width + x as usize]
        }
    };
    // Forward pass (the neighbours above and to the left), then backward (below, right).
    for (pass, neigh) in [
        (0, [(-1, -1), (-1, 0), (-1, 1), (0, -1)]),
        (1, [(1, 1), (1, 0), (1, -1), (0, 1)]),
    ] {
        for yi in 0..height {
            let y = if pass == 0 { yi } else { height - 1 - yi };
            for xi in 0..width {
                let x = if pass == 0 { xi } else { width - 1 - xi };
                let best = neigh
                    .iter()
                    .map(|&(dy, dx)| at(&d, y as isize + dy, x as isize + dx))
                    .min()
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let i = y * width + x;
                d[i] = d[i].min(best);
            }
        }
    }
    d
}

/// [`paste_back`] with a feathered seam `feather` pixels wide: kept pixels are copied byte for
/// byte; a generated pixel at chessboard distance `d` ([`seam_distance`]) from the kept region,
/// `d < feather`, becomes `round(w · input + (1 − w) · generated)` with the input's weight
/// `w = (feather − d) / feather` (1 at the seam, falling linearly to 0 at `feather`); pixels at
/// `d ≥ feather` stay as generated. `feather == 0` is the hard seam of [`paste_back`].
pub fn paste_back_feathered(out: &mut Image, src: &Image, generate: &[bool], feather: usize) {
    paste_back(out, src, generate);
    if feather == 0 {
        return;
    }
    let dist = seam_distance(generate, out.width);
    for (i, &d) in dist.iter().enumerate() {
        let d = d as usize;
        if d == 0 || d >= feather {
            continue;
        }
        let w = (feather - d) as f32 / feather as f32;
        for c in i * 3..i * 3 + 3 {
            let v = w * src.rgb[c] as f32 + (1.0 - w) * out.rgb[c] as f32;
            out.rgb[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Reads an edit mask PNG of the image's size: white (luma ≥ 128) marks pixels to generate,
/// black pixels to keep. Returns the per-pixel "generate" flags. The size is checked from the
/// PNG header, before the pixels are decoded.
pub fn read_mask(path: &std::path::Path, side: usize) -> Result<Vec<bool>, HostError> {
    let (file, name) = open_png(path)?;
    decode_mask(file, &name, side)
}

/// [`read_mask`] on PNG bytes from `reader`; `name` labels errors.
pub fn decode_mask(
    reader: impl std::io::Read,
    name: &str,
    side: usize,
) -> Result<Vec<bool>, HostError> {
    let m = decode_png_rgb_sized(reader, name, |w, h| check_side("mask", side, w, h))?;
    Ok(m.rgb
        .chunks_exact(3)
        .map(|p| (p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114) >= 128 * 1000)
        .collect())
}

/// The latent keep mask (`P × P`, fraction of kept pixels per latent cell) of pixel flags
/// (`true` = generate).
pub fn keep_mask(generate: &[bool], side: usize, p: usize) -> Vec<f32> {
    let f = side / p;
    let mut keep = vec![0f32; p * p];
    for y in 0..side {
        for x in 0..side {
            if !generate[y * side + x] {
                keep[(y / f) * p + x / f] += 1.0;
            }
        }
    }
    keep.iter_mut().for_each(|v| *v /= (f * f) as f32);
    keep
}

/// What `edit` generates (per-pixel flags, `side × side`): the pixels a mask marks (`mask`,
/// from [`read_mask`] / [`decode_mask`]) or those inside the pixel box `x0,y0,x1,y1` (`r#box`,
/// as given on the command line), exactly one of the two; `invert` swaps generate and keep.
pub fn edit_region(
    side: usize,
    mask: Option<Vec<bool>>,
    r#box: Option<&[usize]>,
    invert: bool,
) -> Result<Vec<bool>, HostError> {
    let mut generate = match (mask, r#box) {
        (Some(m), None) => {
            // A mask from `decode_mask` has this size; anything else would index out of range
            // in `keep_mask`.
            if m.len() != side * side {
                return Err(HostError::Option(format!(
                    "the mask has {} pixels, expected {side}x{side}",
                    m.len()
                )));
            }
            m
        }
        (None, Some(b)) => {
            let b: [usize; 4] = b
                .try_into()
                .map_err(|_| HostError::Option("--box x0,y0,x1,y1".into()))?;
            if b[0] >= b[2] || b[1] >= b[3] || b[2] > side || b[3] > side {
                return Err(HostError::Option(format!(
                    "--box {b:?}: need x0 < x1 <= {side} and y0 < y1 <= {side}"
                )));
            }
            box_mask(side, b, false)
        }
        (Some(_), Some(_)) => {
            return Err(HostError::Option(
                "give either --mask FILE or --box x0,y0,x1,y1, not both".into(),
            ))
        }
        (None, None) => {
            return Err(HostError::Option(
                "give --mask FILE or --box x0,y0,x1,y1".into(),
            ))
        }
    };
    if invert {
        generate.iter_mut().for_each(|g| *g = !*g);
    }
    Ok(generate)
}

/// A pixel mask that generates inside the box `[x0, x1) × [y0, y1)` (or outside when `outside`).
pub fn box_mask(side: usize, b: [usize; 4], outside: bool) -> Vec<bool> {
    let [x0, y0, x1, y1] = b;
    (0..side * side)
        .map(|i| {
            let (y, x) = (i / side, i % side);
            let inside = x >= x0 && x < x1 && y >= y0 && y < y1;
            inside != outside
        })
        .collect()
}

/// Bilinear (align_corners = false) resize of an RGB8 image to `side × side`.
pub fn resize_bilinear(img: &Image, side: usize) -> Image {
    let (w, h) = (img.width, img.height);
    let mut rgb = vec![0u8; side * side * 3];
    let src = |n_in: usize, o: usize| -> (usize, usize, f32) {
        let s = ((o as f32 + 0.5) * n_in as f32 / side as f32 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, s - i0 as f32)
    };
    for y in 0..side {
        let (y0, y1, fy) = src(h, y);
        for x in 0..side {
            let (x0, x1, fx) = src(w, x);
            for c in 0..3 {
                let g = |yy: usize, xx: usize| img.rgb[(yy * w + xx) * 3 + c] as f32;
                let v = (g(y0, x0) * (1.0 - fx) + g(y0, x1) * fx) * (1.0 - fy)
                    + (g(y1, x0) * (1.0 - fx) + g(y1, x1) * fx) * fy;
                rgb[(y * side + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Image {
        width: side,
        height: side,
        rgb,
    }
}

/// Box-filter downscale of a square RGB8 image by an integer factor.
pub fn downscale_box(img: &Image, side: usize) -> Image {
    let f = img.width / side;
    let mut rgb = vec![0u8; side * side * 3];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                let mut s = 0u32;
                for dy in 0..f {
                    for dx in 0..f {
                        s += img.rgb[((y * f + dy) * img.width + x * f + dx) * 3 + c] as u32;
                    }
                }
                rgb[(y * side + x) * 3 + c] = ((s as f32) / (f * f) as f32).round() as u8;
            }
        }
    }
    Image {
        width: side,
        height: side,
        rgb,
    }
}

/// Steps of `sched` a low-resolution input of side `low` (model side `side`) determines: those
/// whose patch size is at most `P · low / side`.
pub fn forced_steps(sched: &Schedule, p: usize, low: usize, side: usize) -> usize {
    let limit = p * low / side;
    sched
        .pn
        .iter()
        .filter(|&&pn| (pn as usize) <= limit)
        .count()
}

/// The input sides `upscale` accepts for a model of side `side` and latent side `p` on `sched`:
/// the sides below `side` that divide it and whose latent counterpart `p · low / side` is a patch
/// size of the schedule (so the input determines whole steps).
pub fn upscale_sides(sched: &Schedule, p: usize, side: usize) -> Vec<usize> {
    (1..side)
        .filter(|&low| side.is_multiple_of(low) && (p * low).is_multiple_of(side))
        .filter(|&low| sched.pn.iter().any(|&pn| pn as usize == p * low / side))
        .collect()
}

/// What a low-resolution input fixes in super-resolution: the tokens of its first `keep_steps`
/// steps (by default the steps it determines), from the input resized to the model's side.
pub fn upscale_source(
    model: &Model<'_>,
    sched: &Schedule,
    img: &Image,
    keep_steps: Option<usize>,
    par: &dyn Parallel,
) -> Result<(Vec<u32>, usize), HostError> {
    check_model(model)?;
    let cfg = &model.config;
    let side = cfg.image_side();
    let p = cfg.latent_side();
    check_upscale_size(model, sched, img.width, img.height)?;
    let keep_steps = keep_steps.unwrap_or_else(|| forced_steps(sched, p, img.width, side));
    if keep_steps == 0 || keep_steps > sched.len() {
        return Err(HostError::Option(format!(
            "the low-resolution input fixes {keep_steps} of {} steps; use --keep-steps 1..={}",
            sched.len(),
            sched.len()
        )));
    }
    let up = resize_bilinear(img, side);
    let mut toks = tokens_of(model, sched, &up, par)?;
    toks.truncate((0..keep_steps).map(|k| sched.tokens(k)).sum());
    Ok((toks, keep_steps))
}

/// Refuses a low-resolution input of `width × height` that is not square with a side
/// [`upscale_sides`] lists, naming the sides that work.
fn check_upscale_size(
    model: &Model<'_>,
    sched: &Schedule,
    width: usize,
    height: usize,
) -> Result<(), HostError> {
    let side = model.config.image_side();
    let sides = upscale_sides(sched, model.config.latent_side(), side);
    if width != height || !sides.contains(&width) {
        let list: Vec<String> = sides.iter().map(|s| format!("{s}x{s}")).collect();
        return Err(HostError::Option(format!(
            "low-resolution image is {width}x{height}; upscale accepts {} (square sides that \
             divide the model's {side} and match a patch size of the schedule)",
            if list.is_empty() {
                "no size on this schedule".to_string()
            } else {
                list.join(", ")
            }
        )));
    }
    Ok(())
}

/// Reads the low-resolution input of [`upscale_source`] on `model` and `sched`: the model must
/// have an encoder and the PNG a side [`upscale_sides`] lists, both checked before any pixel is
/// decoded (the size from the PNG header).
pub fn read_upscale_image(
    model: &Model<'_>,
    sched: &Schedule,
    path: &std::path::Path,
) -> Result<Image, HostError> {
    let (file, name) = open_png(path)?;
    decode_upscale_image(model, sched, file, &name)
}

/// [`read_upscale_image`] on PNG bytes from `reader`; `name` labels errors.
pub fn decode_upscale_image(
    model: &Model<'_>,
    sched: &Schedule,
    reader: impl std::io::Read,
    name: &str,
) -> Result<Image, HostError> {
    check_model(model)?;
    decode_png_rgb_sized(reader, name, |w, h| check_upscale_size(model, sched, w, h))
}

/// Super-resolution from [`upscale_source`]'s tokens: they are forced, the rest sampled.
#[allow(clippy::too_many_arguments)]
pub fn upscale_from(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    forced: &[u32],
    policy: &mut dyn ResamplePolicy,
    par: &dyn Parallel,
    on_step: &mut dyn FnMut(),
) -> Result<Image, HostError> {
    // Keep everything on the coarse steps: force by step count through a keep mask of ones and
    // a source that ends after the forced steps (EditHook leaves tokens beyond it alone).
    let p = model.config.latent_side();
    let keep = vec![1f32; p * p];
    sample_forced(model, opts, sched, forced, &keep, policy, par, on_step)
}

/// Super-resolution: the low-resolution `img` (square, a side [`upscale_sides`] lists) fixes the
/// first `keep_steps` steps' tokens (by default the steps it determines); the rest are sampled.
#[allow(clippy::too_many_arguments)]
pub fn upscale(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    img: &Image,
    keep_steps: Option<usize>,
    policy: &mut dyn ResamplePolicy,
    par: &dyn Parallel,
    on_step: &mut dyn FnMut(),
) -> Result<(Image, usize), HostError> {
    let (forced, keep_steps) = upscale_source(model, sched, img, keep_steps, par)?;
    let out = upscale_from(model, opts, sched, &forced, policy, par, on_step)?;
    Ok((out, keep_steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_region_takes_exactly_one_valid_region() {
        let m = box_mask(4, [1, 1, 3, 3], false);
        assert_eq!(edit_region(4, Some(m.clone()), None, false).unwrap(), m);
        let inv: Vec<bool> = m.iter().map(|g| !g).collect();
        assert_eq!(
            edit_region(4, None, Some(&[1, 1, 3, 3]), true).unwrap(),
            inv
        );
        let err = |r: Result<Vec<bool>, HostError>| r.unwrap_err().to_string();
        assert!(
            err(edit_region(4, Some(m.clone()), Some(&[0, 0, 1, 1]), false)).contains("not both")
        );
        assert!(err(edit_region(4, None, None, false)).contains("--mask FILE or --box"));
        assert!(err(edit_region(4, Some(vec![true; 15]), None, false)).contains("15 pixels"));
        assert!(err(edit_region(4, None, Some(&[0, 0, 5, 1]), false)).contains("x1 <= 4"));
        assert!(err(edit_region(4, None, Some(&[2, 0, 2, 1]), false)).contains("x0 < x1"));
        assert!(err(edit_region(4, None, Some(&[0, 0, 1]), false)).contains("--box x0,y0,x1,y1"));
    }

    /// Brute-force chessboard distance to the nearest kept pixel (the definition).
    fn brute(generate: &[bool], w: usize) -> Vec<u32> {
        let h = generate.len() / w;
        (0..w * h)
            .map(|i| {
                let (y, x) = ((i / w) as isize, (i % w) as isize);
                (0..w * h)
                    .filter(|&j| !generate[j])
                    .map(|j| {
                        let (yy, xx) = ((j / w) as isize, (j % w) as isize);
                        (y - yy).unsigned_abs().max((x - xx).unsigned_abs()) as u32
                    })
                    .min()
                    .unwrap_or(u32::MAX)
            })
            .collect()
    }

    #[test]
    fn seam_distance_is_the_exact_chessboard_distance() {
        // Boxes, inverted boxes, a scattered pattern, a non-square grid, nothing kept.
        let mut cases = vec![
            (box_mask(12, [3, 2, 9, 11], false), 12),
            (box_mask(12, [3, 2, 9, 11], true), 12),
            (vec![true; 35], 7),
        ];
        let scattered: Vec<bool> = (0..9 * 13).map(|i| (i * 7919) % 11 != 0).collect();
        cases.push((scattered, 9));
        for (g, w) in cases {
            assert_eq!(seam_distance(&g, w), brute(&g, w), "width {w}");
        }
    }

    #[test]
    fn feathered_seam_blends_only_near_the_kept_region() {
        let side = 16;
        let generate = box_mask(side, [4, 4, 14, 14], false);
        let img = |v: u8| Image {
            width: side,
            height: side,
            rgb: vec![v; side * side * 3],
        };
        let (src, gen) = (img(0), img(255));
        let feather = 4;
        let mut out = img(255);
        paste_back_feathered(&mut out, &src, &generate, feather);
        let dist = seam_distance(&generate, side);
        for (i, &d) in dist.iter().enumerate() {
            let px = &out.rgb[i * 3..i * 3 + 3];
            match d as usize {
                0 => assert_eq!(px, &src.rgb[i * 3..i * 3 + 3], "kept pixel {i}"),
                d if d >= feather => assert_eq!(px, &gen.rgb[i * 3..i * 3 + 3], "pixel {i}"),
                d => {
                    // Strictly between, and exactly the linear weight's value.
                    let want = (255.0 * d as f32 / feather as f32).round() as u8;
                    assert!(
                        px.iter().all(|&v| v > 0 && v < 255 && v == want),
                        "{i}: {px:?}"
                    );
                }
            }
        }
        // Feather 0 is the hard seam.
        let (mut hard, mut zero) = (img(255), img(255));
        paste_back(&mut hard, &src, &generate);
        paste_back_feathered(&mut zero, &src, &generate, 0);
        assert_eq!(hard.rgb, zero.rgb);
    }
}
