//! `srdd-tools quant-report`: what int8 weights cost against the float model, measured on
//! calibration images sampled from the float model (issue #12, deliverable 1).
//!
//! For each calibration image (class `i·C/N`, seed `i+1`, the model's default sampling):
//!
//! 1. The float model samples freely with a [`Recorder`]; its tokens, conditional logits and
//!    final `f_hat` are kept.
//! 2. The int8 model runs with those tokens forced at every step (teacher forcing) and the same
//!    recorder, so both see identical inputs: per layer (embedded input, each block's output,
//!    logits) the activation SQNR; per scale the top-1 agreement of the conditional logits and
//!    KL(float ‖ int8).
//! 3. Both decoders decode the float run's final `f_hat`: decoder PSNR.
//! 4. The int8 model samples freely with the same seed: identical tokens per scale, image PSNR.
//!
//! The outlier ratio of a layer is max over channels of max|x| / RMS(x) of the float model's
//! activations of that layer over every token of every calibration run.

use crate::backend_parity::{psnr_db, Recorder};
use serde_json::{json, Value};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Compute, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::resample::{FixedFraction, ResamplePolicy};
use srdd_core::{Model, Schedule};
use std::collections::BTreeMap;

/// Why a report could not be made (one line each).
#[derive(Debug, thiserror::Error)]
pub enum QuantReportError {
    /// The two models cannot be compared.
    #[error("models differ in shape: {0}")]
    Mismatch(String),
    /// The engine refused a run.
    #[error("engine: {0}")]
    Core(#[from] srdd_core::Error),
    /// A calibration image or the classifier could not be used.
    #[error("{0}")]
    Input(String),
}

/// What one run produced.
struct Run {
    /// Tokens of each step (after forcing).
    tokens: Vec<Vec<u32>>,
    /// Conditional logits of each step, token after token (`tokens × vocab`).
    logits: Vec<Vec<f32>>,
    /// `f_hat` after the last step.
    f_hat: Vec<f32>,
    /// Decoded RGB rows, interleaved, in [−1, 1].
    image: Vec<f32>,
}

/// Forces tokens (when given) and keeps tokens, conditional logits and the last `f_hat`.
struct Hook {
    forced: Option<Vec<Vec<u32>>>,
    tokens: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    f_hat: Vec<f32>,
}

impl StepHook for Hook {
    fn logits(&mut self, k: usize, _t: usize, cond: &[f32]) {
        if self.logits.len() <= k {
            self.logits.resize(k + 1, Vec::new());
        }
        self.logits[k].extend_from_slice(cond);
    }
    fn force(&mut self, k: usize, _pn: usize, tokens: &mut [u32]) {
        if let Some(f) = self.forced.as_ref().and_then(|f| f.get(k)) {
            if f.len() == tokens.len() {
                tokens.copy_from_slice(f);
            }
        }
        if self.tokens.len() <= k {
            self.tokens.resize(k + 1, Vec::new());
        }
        self.tokens[k] = tokens.to_vec();
    }
    fn scale_done(&mut self, _k: usize, _tokens: &[u32], f_hat: &[f32]) {
        self.f_hat.clear();
        self.f_hat.extend_from_slice(f_hat);
    }
}

/// Samples one image of `model` (tokens forced when given), recording into `rec` when given.
fn run(
    model: &Model<'_>,
    opts: SampleOptions,
    forced: Option<Vec<Vec<u32>>>,
    rec: Option<&mut Recorder>,
    decode_image: bool,
    par: &dyn Parallel,
) -> Result<Run, QuantReportError> {
    let sched = Schedule::full(&model.config);
    let plan = Plan::batch(&model.config, &opts, &sched, 1, Compute::Cpu)?;
    let mut ab = AlignedBytes::zeroed(plan.arena_bytes());
    let mut s = Sampler::cpu(model, opts, sched, 1, ab.as_bytes_mut(), par)?;
    let mut hook = Hook {
        forced,
        tokens: Vec::new(),
        logits: Vec::new(),
        f_hat: Vec::new(),
    };
    // Refinement is off; the policy is never asked.
    let mut policy = FixedFraction { fraction: 0.0 };
    let mut rec = rec;
    while !s.finished() {
        let mut h: [&mut dyn StepHook; 1] = [&mut hook];
        let mut p: [&mut dyn ResamplePolicy; 1] = [&mut policy];
        match rec.as_deref_mut() {
            Some(r) => {
                r.step = s.steps_done();
                s.step_probed(&mut h, &mut p, r)?;
            }
            None => s.step(&mut h, &mut p)?,
        }
    }
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
    // Teacher-forced runs need only the logits: decoding is skipped there.
    if decode_image {
        s.decode(0, &mut |y, row| rows.push((y, row.to_vec())))?;
    }
    rows.sort_by_key(|r| r.0);
    Ok(Run {
        tokens: hook.tokens,
        logits: hook.logits,
        f_hat: hook.f_hat,
        image: rows.into_iter().flat_map(|r| r.1).collect(),
    })
}

/// Decodes `f_hat` with `model`'s decoder (interleaved RGB rows in [−1, 1]).
fn decode(
    model: &Model<'_>,
    f_hat: &[f32],
    par: &dyn Parallel,
) -> Result<Vec<f32>, QuantReportError> {
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
    crate::parity::decode_in(
        model,
        f_hat,
        srdd_core::vae::decoder_scratch_bytes(&model.config, 0),
        true,
        0,
        par,
        &mut |y, row| rows.push((y, row.to_vec())),
    )?;
    rows.sort_by_key(|r| r.0);
    Ok(rows.into_iter().flat_map(|r| r.1).collect())
}

/// The two models must agree in depth, width, vocabulary and schedule length.
fn check_shapes(f: &Model<'_>, q: &Model<'_>) -> Result<(), QuantReportError> {
    let (cf, cq) = (&f.config, &q.config);
    if cf.var.depth != cq.var.depth
        || cf.var.embed_dim != cq.var.embed_dim
        || cf.vae.vocab_size != cq.vae.vocab_size
        || Schedule::full(cf).len() != Schedule::full(cq).len()
    {
        return Err(QuantReportError::Mismatch(format!(
            "depth {}/{}, width {}/{}, vocab {}/{}",
            cf.var.depth,
            cq.var.depth,
            cf.var.embed_dim,
            cq.var.embed_dim,
            cf.vae.vocab_size,
            cq.vae.vocab_size
        )));
    }
    Ok(())
}

/// Sampling options of calibration image `i` of `calib`: class `i·C/N`, seed `i+1`, the
/// engine's defaults with top-k within a small test model's vocabulary, no refinement.
pub fn calib_options(cfg: &srdd_core::ModelConfig, i: usize, calib: usize) -> SampleOptions {
    let classes = cfg.var.num_classes.max(1) as usize;
    let label = (i * classes / calib.max(1)) as u32;
    let d = SampleOptions::new(label);
    SampleOptions {
        seed: i as u64 + 1,
        refine: 0,
        top_k: d.top_k.min(cfg.vae.vocab_size),
        ..d
    }
}

/// Adds one image's teacher-forced comparison (float logits `a`, quantized `b`, per step) to
/// the per-scale tallies: top-1 agreement and KL(float ‖ quantized).
fn score_scales(scales: &mut [Scale], vocab: usize, a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (k, s) in scales.iter_mut().enumerate() {
        let (Some(a), Some(b)) = (a.get(k), b.get(k)) else {
            continue;
        };
        for (x, y) in a.chunks(vocab).zip(b.chunks(vocab)) {
            s.tokens += 1;
            s.top1 += (srdd_core::sample::argmax(x) == srdd_core::sample::argmax(y)) as usize;
            let d = kl(x, y);
            s.kl_sum += d;
            s.kl_max = s.kl_max.max(d);
        }
    }
}

/// The float model's calibration runs, kept so that quantized variants are measured against
/// them without sampling again (the automatic precision plan measures many).
pub struct Calibration {
    /// Sampling options per image ([`calib_options`]).
    pub opts: Vec<SampleOptions>,
    /// Tokens per image, per step.
    pub tokens: Vec<Vec<Vec<u32>>>,
    /// Conditional logits per image, per step.
    pub logits: Vec<Vec<Vec<f32>>>,
    /// Final `f_hat` per image.
    pub f_hat: Vec<Vec<f32>>,
    /// The float decoder's image of each `f_hat`.
    pub decoded: Vec<Vec<f32>>,
}

/// Samples `calib` images with the float model `f` (as [`report`] does) and decodes each.
pub fn calibrate(
    f: &Model<'_>,
    calib: usize,
    par: &dyn Parallel,
) -> Result<Calibration, QuantReportError> {
    let mut c = Calibration {
        opts: Vec::new(),
        tokens: Vec::new(),
        logits: Vec::new(),
        f_hat: Vec::new(),
        decoded: Vec::new(),
    };
    for i in 0..calib {
        let opts = calib_options(&f.config, i, calib);
        let fl = run(f, opts, None, None, false, par)?;
        c.decoded.push(decode(f, &fl.f_hat, par)?);
        c.opts.push(opts);
        c.tokens.push(fl.tokens);
        c.logits.push(fl.logits);
        c.f_hat.push(fl.f_hat);
    }
    Ok(c)
}

/// Teacher-forced per-scale figures of `q` against the calibration (the same tallies as
/// [`report`]'s, without the free run or any decoding).
pub fn forced_scales(
    f: &Model<'_>,
    q: &Model<'_>,
    cal: &Calibration,
    par: &dyn Parallel,
) -> Result<Vec<Scale>, QuantReportError> {
    check_shapes(f, q)?;
    let vocab = f.config.vae.vocab_size as usize;
    let mut scales = vec![Scale::default(); Schedule::full(&f.config).len()];
    for (i, opts) in cal.opts.iter().enumerate() {
        let qt = run(q, *opts, Some(cal.tokens[i].clone()), None, false, par)?;
        score_scales(&mut scales, vocab, &cal.logits[i], &qt.logits);
    }
    Ok(scales)
}

/// `q`'s decoder against the float decoder on the calibration `f_hat`s: the minimum PSNR (dB,
/// as [`report`]'s) and the mean squared error in the PSNR's units (images mapped to [0, 1]).
pub fn decoder_error(
    q: &Model<'_>,
    cal: &Calibration,
    par: &dyn Parallel,
) -> Result<(f64, f64), QuantReportError> {
    let (mut psnr, mut sq, mut n) = (f64::INFINITY, 0f64, 0usize);
    for (f_hat, a) in cal.f_hat.iter().zip(&cal.decoded) {
        let b = decode(q, f_hat, par)?;
        psnr = psnr.min(psnr_db(a, &b));
        if a.len() != b.len() {
            return Err(QuantReportError::Mismatch(
                "decoded image sizes differ".into(),
            ));
        }
        sq += a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((*x as f64 - *y as f64) * 0.5).powi(2))
            .sum::<f64>();
        n += a.len();
    }
    Ok((psnr, sq / n.max(1) as f64))
}

/// SQNR in dB of `Σa²` over `Σ(a−b)²` (infinite when the noise is 0).
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 || !noise.is_finite() {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// KL(p ‖ q) of the softmaxes of logits `p` and `q`.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |x: &[f32]| {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
        m + x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(a, b)| {
            let (a, b) = (*a as f64 - lp, *b as f64 - lq);
            a.exp() * (a - b)
        })
        .sum::<f64>()
        .max(0.0)
}

/// One probed layer: `"input"`, `"block"` (with its index) or `"logits"`.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    /// Name (`input`, `block.3`, `logits`).
    pub name: String,
    /// Σa² of the float activations.
    pub signal: f64,
    /// Σ(a−b)² of the int8 activations against them.
    pub noise: f64,
    /// Per channel: max |a| and Σa² and the count of values.
    chan_max: Vec<f64>,
    chan_sq: Vec<f64>,
    chan_n: usize,
}

impl Layer {
    /// Activation SQNR (dB).
    pub fn sqnr_db(&self) -> f64 {
        sqnr_db(self.signal, self.noise)
    }
    /// Outlier ratio max|x|/RMS(x) of the worst channel, and that channel.
    pub fn outlier(&self) -> (f64, usize) {
        let mut best = (0.0, 0);
        for (c, (m, s)) in self.chan_max.iter().zip(&self.chan_sq).enumerate() {
            let rms = (s / self.chan_n.max(1) as f64).sqrt();
            if rms > 0.0 && m / rms > best.0 {
                best = (m / rms, c);
            }
        }
        best
    }
}

/// Per scale, teacher forced.
#[derive(Clone, Debug, Default)]
pub struct Scale {
    /// Tokens of the scale (over every calibration image).
    pub tokens: usize,
    /// Tokens whose int8 argmax equals the float argmax.
    pub top1: usize,
    /// ΣKL and max KL over tokens.
    pub kl_sum: f64,
    pub kl_max: f64,
    /// Free running: identical tokens.
    pub free_same: usize,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The two inputs.
    pub float_name: String,
    pub int8_name: String,
    /// Calibration images.
    pub calib: usize,
    /// Per weight tensor (every tensor of the int8 file; float tensors there compare exactly).
    pub tensors: Vec<TensorError>,
    pub layers: Vec<Layer>,
    pub scales: Vec<Scale>,
    /// Min decoder PSNR (dB) over the calibration `f_hat`s.
    pub decoder_psnr_db: f64,
    /// Min image PSNR (dB) of the free-running images.
    pub free_image_psnr_db: f64,
}

impl Report {
    /// Forced-token agreement: int8's greedy choice under teacher forcing against the float
    /// model's over every token.
    pub fn forced_agreement(&self) -> f64 {
        let (a, t) = self
            .scales
            .iter()
            .fold((0, 0), |(a, t), s| (a + s.top1, t + s.tokens));
        a as f64 / t.max(1) as f64
    }
    /// Free-running token agreement over every token.
    pub fn free_agreement(&self) -> f64 {
        let (a, t) = self
            .scales
            .iter()
            .fold((0, 0), |(a, t), s| (a + s.free_same, t + s.tokens));
        a as f64 / t.max(1) as f64
    }
}

/// Compares `q` (int8) with `f` (float) on `calib` sampled calibration images.
pub fn report(
    f: &Model<'_>,
    q: &Model<'_>,
    calib: usize,
    par: &dyn Parallel,
) -> Result<Report, QuantReportError> {
    check_shapes(f, q)?;
    let cf = &f.config;
    let vocab = cf.vae.vocab_size as usize;
    let width = cf.var.embed_dim as usize;
    let steps = Schedule::full(cf).len();
    let mut layers: BTreeMap<(u8, usize), Layer> = BTreeMap::new();
    let mut scales = vec![Scale::default(); steps];
    let (mut dec_psnr, mut free_psnr) = (f64::INFINITY, f64::INFINITY);
    for i in 0..calib {
        let opts = calib_options(&f.config, i, calib);
        let mut rf = Recorder::default();
        let fl = run(f, opts, None, Some(&mut rf), true, par)?;
        let mut rq = Recorder::default();
        let qt = run(q, opts, Some(fl.tokens.clone()), Some(&mut rq), false, par)?;
        add_layers(&mut layers, &rf, &rq, width);
        score_scales(&mut scales, vocab, &fl.logits, &qt.logits);
        let (da, db) = (decode(f, &fl.f_hat, par)?, decode(q, &fl.f_hat, par)?);
        dec_psnr = dec_psnr.min(psnr_db(&da, &db));
        let qf = run(q, opts, None, None, true, par)?;
        for (k, s) in scales.iter_mut().enumerate() {
            if let (Some(a), Some(b)) = (fl.tokens.get(k), qf.tokens.get(k)) {
                s.free_same += a.iter().zip(b).filter(|(x, y)| x == y).count();
            }
        }
        free_psnr = free_psnr.min(psnr_db(&fl.image, &qf.image));
    }
    Ok(Report {
        calib,
        layers: layers.into_values().collect(),
        scales,
        decoder_psnr_db: dec_psnr,
        free_image_psnr_db: free_psnr,
        ..Report::default()
    })
}

/// A figure for JSON: infinities as the strings `"inf"` / `"-inf"`.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("nan")
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// The report as JSON.
pub fn to_json(r: &Report) -> Value {
    json!({
        "float": r.float_name,
        "int8": r.int8_name,
        "calib_images": r.calib,
        "tensors": r.tensors.iter().map(|t| json!({
            "name": t.name, "numel": t.numel, "sqnr_db": num(t.sqnr_db), "rmse": num(t.rmse),
        })).collect::<Vec<_>>(),
        "layers": r.layers.iter().map(|l| {
            let (ratio, ch) = l.outlier();
            json!({
                "name": l.name,
                "sqnr_db": num(l.sqnr_db()),
                "outlier_ratio": if l.chan_n > 0 { num(ratio) } else { Value::Null },
                "outlier_channel": if l.chan_n > 0 { json!(ch) } else { Value::Null },
            })
        }).collect::<Vec<_>>(),
        "scales": r.scales.iter().enumerate().map(|(k, s)| json!({
            "step": k,
            "tokens": s.tokens,
            "top1": num(s.top1 as f64 / s.tokens.max(1) as f64),
            "kl_mean": num(s.kl_sum / s.tokens.max(1) as f64),
            "kl_max": num(s.kl_max),
            "free_agreement": num(s.free_same as f64 / s.tokens.max(1) as f64),
        })).collect::<Vec<_>>(),
        "decoder_psnr_db": num(r.decoder_psnr_db),
        "end_to_end": {
            "forced_token_agreement": num(r.forced_agreement()),
            "free_token_agreement": num(r.free_agreement()),
            "free_image_psnr_db": num(r.free_image_psnr_db),
        },
    })
}

/// The report as terminal tables.
pub fn to_text(r: &Report) -> String {
    let mut s = format!(
        "float {}  vs  int8 {}  ({} calibration images)\n\nlayer        act SQNR dB   outlier max/RMS (channel)\n",
        r.float_name, r.int8_name, r.calib
    );
    // The quantized tensors (noise above 0), worst first; every tensor is in the JSON.
    let mut q: Vec<&TensorError> = r.tensors.iter().filter(|t| t.rmse > 0.0).collect();
    q.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    let mut head = format!(
        "weights: {} tensors, {} quantized",
        r.tensors.len(),
        q.len()
    );
    if let (Some(w), Some(b)) = (q.first(), q.last()) {
        head += &format!(
            ", SQNR {:.1}..{:.1} dB (median {:.1}); worst {}:\n",
            w.sqnr_db,
            b.sqnr_db,
            q[q.len() / 2].sqnr_db,
            q.len().min(8)
        );
        for t in q.iter().take(8) {
            head += &format!(
                "  {:<40} {:>6.1} dB  RMSE {:.2e}\n",
                t.name, t.sqnr_db, t.rmse
            );
        }
    } else {
        head += "\n";
    }
    s = head + "\n" + &s;
    for l in &r.layers {
        let (ratio, ch) = l.outlier();
        let out = if l.chan_n > 0 {
            format!("{ratio:.1} ({ch})")
        } else {
            "-".into()
        };
        s += &format!("{:<12} {:>11.1}   {}\n", l.name, l.sqnr_db(), out);
    }
    s += "\nstep  tokens  top1 %   KL mean    KL max     free same %\n";
    for (k, c) in r.scales.iter().enumerate() {
        let t = c.tokens.max(1) as f64;
        s += &format!(
            "{:<5} {:>6}  {:>6.1}   {:<9.2e}  {:<9.2e}  {:>6.1}\n",
            k,
            c.tokens,
            100.0 * c.top1 as f64 / t,
            c.kl_sum / t,
            c.kl_max,
            100.0 * c.free_same as f64 / t
        );
    }
    s += &format!(
        "\ndecoder PSNR (same f_hat): {:.1} dB\nforced-token agreement: {:.1} %\nfree-running token agreement: {:.1} %\nfree-running image PSNR: {:.1} dB",
        r.decoder_psnr_db,
        100.0 * r.forced_agreement(),
        100.0 * r.free_agreement(),
        r.free_image_psnr_db
    );
    s
}

/// A PNG-ready image: left panel bars of SQNR per layer (0–100 dB, infinite drawn full), right
/// panel bars of mean KL per scale (scaled to the largest).
pub fn plot(r: &Report) -> srdd::Image {
    let (w, h, pad) = (640usize, 240usize, 10usize);
    let mut rgb = vec![255u8; w * h * 3];
    let mut rect = |x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]| {
        for y in y0..y1.min(h) {
            for x in x0..x1.min(w) {
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
            }
        }
    };
    let panel = w / 2;
    let base = h - pad;
    let top = pad;
    // Axes.
    rect(pad, base, panel - pad, base + 1, [0, 0, 0]);
    rect(panel + pad, base, w - pad, base + 1, [0, 0, 0]);
    // Grid lines every 20 dB on the SQNR panel.
    for g in 1..5 {
        let y = base - g * (base - top) / 5;
        rect(pad, y, panel - pad, y + 1, [220, 220, 220]);
    }
    let bars = |n: usize, x0: usize, x1: usize| -> Vec<(usize, usize)> {
        let step = (x1 - x0) / n.max(1);
        (0..n)
            .map(|i| (x0 + i * step + 1, x0 + (i + 1) * step.max(2) - 1))
            .collect()
    };
    for (l, (a, b)) in r.layers.iter().zip(bars(r.layers.len(), pad, panel - pad)) {
        let v = l.sqnr_db();
        let frac = if v.is_finite() {
            (v / 100.0).clamp(0.0, 1.0)
        } else if v > 0.0 {
            1.0
        } else {
            0.0
        };
        let hgt = (frac * (base - top) as f64) as usize;
        rect(a, base - hgt, b, base, [40, 90, 200]);
    }
    let kls: Vec<f64> = r
        .scales
        .iter()
        .map(|s| s.kl_sum / s.tokens.max(1) as f64)
        .collect();
    let kmax = kls.iter().cloned().fold(0.0, f64::max);
    for (v, (a, b)) in kls.iter().zip(bars(kls.len(), panel + pad, w - pad)) {
        let frac = if kmax > 0.0 { v / kmax } else { 0.0 };
        let hgt = (frac * (base - top) as f64) as usize;
        rect(a, base - hgt, b, base, [200, 80, 40]);
    }
    srdd::Image {
        width: w,
        height: h,
        rgb,
    }
}

/// One weight tensor of the int8 file against the float file's.
#[derive(Clone, Debug)]
pub struct TensorError {
    /// Tensor name.
    pub name: String,
    /// Elements.
    pub numel: usize,
    /// SQNR (dB) of the dequantized weight.
    pub sqnr_db: f64,
    /// RMSE of the dequantized weight.
    pub rmse: f64,
}

/// Every tensor of a packed file, dequantized to f32 in the official row-major shape.
fn tensors(bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>, srdd_core::Error> {
    use srdd_core::format::{parse, TensorDType, TensorEntry};
    let file = parse(bytes)?;
    let mut table = file.table;
    let mut out = Vec::new();
    for _ in 0..file.header.tensor_count {
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table)
            .map_err(|_| srdd_core::Error::BadHeader)?;
        table = rest;
        let at = |off: u64, len: usize| {
            file.data
                .get(off as usize..off as usize + len)
                .ok_or(srdd_core::Error::BadHeader)
        };
        let numel: usize = e.shape.iter().map(|d| *d as usize).product();
        let v: Vec<f32> = match e.dtype {
            TensorDType::F32 => at(e.offset, numel * 4)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            TensorDType::F16 => at(e.offset, numel * 2)?
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            TensorDType::I8 | TensorDType::I8A16 => {
                // Linear [out, in]: one packed weight; conv [out, in, kh, kw]: one per kernel
                // row, input index kx·cin + ci (as the loader reads them).
                let s: Vec<usize> = e.shape.iter().map(|d| *d as usize).collect();
                let (rows, cin, kh, kw) = match s.as_slice() {
                    [r, k] => (*r, *k, 1, 1),
                    [r, c, h, w] => (*r, *c, *h, *w),
                    _ => return Err(srdd_core::Error::BadHeader),
                };
                let k = cin * kw;
                let glen = srdd_core::kernels::pack::panels_len(rows, k);
                let q: &[i8] = bytemuck::cast_slice(at(e.offset, kh * glen)?);
                let scales: Vec<f32> = at(e.scales_offset, rows * 4)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let mut w = vec![0f32; numel];
                for o in 0..rows {
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let g = &q[ky * glen..(ky + 1) * glen];
                                let v = srdd_core::kernels::panel_value(g, k, o, kx * cin + ci);
                                w[((o * cin + ci) * kh + ky) * kw + kx] = v as f32 * scales[o];
                            }
                        }
                    }
                }
                w
            }
        };
        out.push((e.name.to_string(), v));
    }
    Ok(out)
}

/// Weight SQNR and RMSE of every tensor of `quant` (packed bytes) against `float`, by name.
pub fn tensor_errors(float: &[u8], quant: &[u8]) -> Result<Vec<TensorError>, QuantReportError> {
    let f: BTreeMap<String, Vec<f32>> = tensors(float)?.into_iter().collect();
    let mut out = Vec::new();
    for (name, q) in tensors(quant)? {
        // An AdaLN table (`pack --ada-table`) replaces a Linear of the float file: f32 values,
        // not a rounding of any float tensor.
        if name.ends_with(".table") && !f.contains_key(&name) {
            continue;
        }
        let Some(a) = f.get(&name) else {
            return Err(QuantReportError::Mismatch(format!(
                "tensor {name} is not in the float file"
            )));
        };
        if a.len() != q.len() {
            return Err(QuantReportError::Mismatch(format!(
                "tensor {name}: {} vs {} elements",
                a.len(),
                q.len()
            )));
        }
        let (mut sig, mut noise) = (0f64, 0f64);
        for (x, y) in a.iter().zip(&q) {
            let (x, y) = (*x as f64, *y as f64);
            sig += x * x;
            noise += (x - y) * (x - y);
        }
        out.push(TensorError {
            name,
            numel: a.len(),
            sqnr_db: sqnr_db(sig, noise),
            rmse: (noise / a.len().max(1) as f64).sqrt(),
        });
    }
    Ok(out)
}

/// One calibration image to encode: its class (`num_classes` = the null class) and its path.
#[derive(Clone, Debug)]
pub struct CalibImage {
    /// Class label; the null class when its directory names no class.
    pub label: u32,
    /// The PNG.
    pub path: std::path::PathBuf,
}

/// The PNGs of `dir` for `--calib DIR`, sorted by path: `dir/*.png` take the null class,
/// `dir/NAME/*.png` the class `NAME` of the model's `class_names` (case-insensitive), the null
/// class when no class has that name. Deeper directories are not read.
pub fn calib_images(
    model: &Model<'_>,
    dir: &std::path::Path,
) -> Result<Vec<CalibImage>, QuantReportError> {
    let err = |p: &std::path::Path, e: std::io::Error| {
        QuantReportError::Input(format!("{}: {e}", p.display()))
    };
    let null = model.config.var.num_classes;
    let class_of = |name: &str| {
        model
            .meta("class_names")
            .and_then(|v| {
                v.split(',')
                    .position(|c| c.trim().eq_ignore_ascii_case(name))
            })
            .map_or(null, |i| i as u32)
    };
    let is_png = |p: &std::path::Path| {
        p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let p = e.map_err(|e| err(dir, e))?.path();
        if p.is_dir() {
            let label = class_of(&p.file_name().unwrap_or_default().to_string_lossy());
            for e in std::fs::read_dir(&p).map_err(|e| err(&p, e))? {
                let q = e.map_err(|e| err(&p, e))?.path();
                if is_png(&q) {
                    out.push(CalibImage { label, path: q });
                }
            }
        } else if is_png(&p) {
            out.push(CalibImage {
                label: null,
                path: p,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    if out.is_empty() {
        return Err(QuantReportError::Input(format!(
            "{}: no PNG images (in it or in its class subdirectories)",
            dir.display()
        )));
    }
    Ok(out)
}

/// Reads `img` (model resolution only) and encodes it with `model`'s encoder into the tokens of
/// each step of the full schedule (`srdd reconstruct`'s tokenizer) and their `f_hat`.
fn encode(
    model: &Model<'_>,
    img: &CalibImage,
    par: &dyn Parallel,
) -> Result<(Vec<Vec<u32>>, Vec<f32>), QuantReportError> {
    let side = model.config.image_side();
    let bad = |e: srdd::HostError| QuantReportError::Input(format!("{}: {e}", img.path.display()));
    let im = srdd::read_png_rgb_sized(&img.path, |w, h| {
        if w != side || h != side {
            return Err(srdd::HostError::ImageSize {
                what: "calibration image",
                expected: side,
                width: w,
                height: h,
            });
        }
        Ok(())
    })
    .map_err(bad)?;
    let sched = Schedule::full(&model.config);
    let (flat, f_hat) = srdd::zero_shot::tokenize_image(model, &sched, &im, par).map_err(bad)?;
    let mut steps = Vec::with_capacity(sched.len());
    let mut at = 0;
    for k in 0..sched.len() {
        let n = sched.tokens(k);
        steps.push(flat[at..at + n].to_vec());
        at += n;
    }
    Ok((steps, f_hat))
}

/// [`report`] on real images: each of `images` is encoded by the float model's encoder, both
/// models run teacher forced on those tokens (the image's class; model defaults, seed `i+1`),
/// giving the per-layer SQNR, per-scale top-1 and KL; both decoders decode the image's `f_hat`
/// (decoder PSNR). Free running is as [`report`]'s: both models sample the image's class with
/// seed `i+1`.
pub fn report_encoded(
    f: &Model<'_>,
    q: &Model<'_>,
    images: &[CalibImage],
    par: &dyn Parallel,
) -> Result<Report, QuantReportError> {
    check_shapes(f, q)?;
    let vocab = f.config.vae.vocab_size as usize;
    let width = f.config.var.embed_dim as usize;
    let mut layers: BTreeMap<(u8, usize), Layer> = BTreeMap::new();
    let mut scales = vec![Scale::default(); Schedule::full(&f.config).len()];
    let (mut dec_psnr, mut free_psnr) = (f64::INFINITY, f64::INFINITY);
    for (i, img) in images.iter().enumerate() {
        let (tokens, f_hat) = encode(f, img, par)?;
        let d = SampleOptions::new(img.label);
        let opts = SampleOptions {
            seed: i as u64 + 1,
            refine: 0,
            top_k: d.top_k.min(vocab as u32),
            ..d
        };
        let mut rf = Recorder::default();
        let fl = run(f, opts, Some(tokens.clone()), Some(&mut rf), false, par)?;
        let mut rq = Recorder::default();
        let qt = run(q, opts, Some(tokens), Some(&mut rq), false, par)?;
        add_layers(&mut layers, &rf, &rq, width);
        score_scales(&mut scales, vocab, &fl.logits, &qt.logits);
        let (da, db) = (decode(f, &f_hat, par)?, decode(q, &f_hat, par)?);
        dec_psnr = dec_psnr.min(psnr_db(&da, &db));
        let (ff, qf) = (
            run(f, opts, None, None, true, par)?,
            run(q, opts, None, None, true, par)?,
        );
        for (k, s) in scales.iter_mut().enumerate() {
            if let (Some(a), Some(b)) = (ff.tokens.get(k), qf.tokens.get(k)) {
                s.free_same += a.iter().zip(b).filter(|(x, y)| x == y).count();
            }
        }
        free_psnr = free_psnr.min(psnr_db(&ff.image, &qf.image));
    }
    Ok(Report {
        calib: images.len(),
        layers: layers.into_values().collect(),
        scales,
        decoder_psnr_db: dec_psnr,
        free_image_psnr_db: free_psnr,
        ..Report::default()
    })
}

/// Per-layer accumulation of one image's two recordings ([`report`], [`report_encoded`]).
fn add_layers(
    layers: &mut BTreeMap<(u8, usize), Layer>,
    rf: &Recorder,
    rq: &Recorder,
    width: usize,
) {
    for at in rf.order() {
        if at.pass != 0 {
            continue;
        }
        let (Some(a), Some(b)) = (rf.get(at), rq.get(at)) else {
            continue;
        };
        let key = match at.op {
            "input" => (0, 0),
            "block" => (1, at.layer),
            _ => (2, 0),
        };
        let l = layers.entry(key).or_insert_with(|| Layer {
            name: match key.0 {
                0 => "input".into(),
                1 => format!("block.{}", at.layer),
                _ => "logits".into(),
            },
            chan_max: vec![0.0; if key.0 == 2 { 0 } else { width }],
            chan_sq: vec![0.0; if key.0 == 2 { 0 } else { width }],
            ..Layer::default()
        });
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (*x as f64, *y as f64);
            l.signal += x * x;
            l.noise += (x - y) * (x - y);
        }
        if a.len() != b.len() {
            l.noise = f64::INFINITY;
        }
        if key.0 != 2 && a.len() % width == 0 {
            for row in a.chunks(width) {
                for (c, x) in row.iter().enumerate() {
                    let x = *x as f64;
                    l.chan_max[c] = l.chan_max[c].max(x.abs());
                    l.chan_sq[c] += x * x;
                }
                l.chan_n += 1;
            }
        }
    }
}

/// One row of `quant-report --compare`: a quantization option and what it keeps of the float
/// model's decisions.
#[derive(Clone, Debug)]
pub struct OptionRow {
    /// The option (`int8`, `int8 weights only`, `int8 + smooth a=0.5`).
    pub name: String,
    /// Forced-token agreement.
    pub forced: f64,
    /// Free-running token agreement.
    pub free: f64,
    /// Lowest teacher-forced top-1 over the scales.
    pub min_top1: f64,
    /// Mean KL over every token, and the largest per-scale mean.
    pub kl_mean: f64,
    pub kl_worst_scale: f64,
    /// The layer with the lowest activation SQNR, and that SQNR (dB).
    pub worst_layer: String,
    pub worst_layer_sqnr_db: f64,
    /// Decoder PSNR (dB).
    pub decoder_psnr_db: f64,
    /// Per scale: top-1 and mean KL.
    pub top1: Vec<f64>,
    pub kl: Vec<f64>,
    /// Mean token max/RMS of the modulated Linear inputs of the float model this option
    /// quantizes (smoothed or not): what a per-token int8 scale pays.
    pub input_peak_to_rms: Option<f64>,
}

impl OptionRow {
    /// The summary of one report.
    pub fn of(name: &str, r: &Report, input_peak_to_rms: Option<f64>) -> OptionRow {
        let mean = |s: &Scale| s.kl_sum / s.tokens.max(1) as f64;
        let (kl, tokens) = r
            .scales
            .iter()
            .fold((0.0, 0), |(k, t), s| (k + s.kl_sum, t + s.tokens));
        let worst = r
            .layers
            .iter()
            .min_by(|a, b| a.sqnr_db().total_cmp(&b.sqnr_db()));
        OptionRow {
            name: name.to_string(),
            forced: r.forced_agreement(),
            free: r.free_agreement(),
            min_top1: r
                .scales
                .iter()
                .map(|s| s.top1 as f64 / s.tokens.max(1) as f64)
                .fold(f64::INFINITY, f64::min),
            kl_mean: kl / tokens.max(1) as f64,
            kl_worst_scale: r.scales.iter().map(mean).fold(0.0, f64::max),
            worst_layer: worst.map_or(String::new(), |l| l.name.clone()),
            worst_layer_sqnr_db: worst.map_or(f64::NAN, |l| l.sqnr_db()),
            decoder_psnr_db: r.decoder_psnr_db,
            top1: r
                .scales
                .iter()
                .map(|s| s.top1 as f64 / s.tokens.max(1) as f64)
                .collect(),
            kl: r.scales.iter().map(mean).collect(),
            input_peak_to_rms,
        }
    }
}

/// Class consistency and feature distance of samples (`--per-class K`).
#[derive(Clone, Debug, Default)]
pub struct ClassReport {
    /// The classifier file.
    pub classifier: String,
    /// Samples per class.
    pub per_class: usize,
    /// Per class: float samples the classifier puts in their intended class.
    pub float_correct: Vec<usize>,
    /// Per class: the same for the int8 samples.
    pub int8_correct: Vec<usize>,
    /// Fréchet distance of the int8 samples' features to the float samples' (same seeds).
    pub fd_int8_float: f64,
    /// Yardstick: float samples of even seeds against float samples of odd seeds.
    pub fd_float_halves: f64,
    /// The int8 effect at the yardstick's size: int8 samples of even seeds against float samples
    /// of odd seeds.
    pub fd_int8_even_float_odd: f64,
    /// Wall time of sampling and classifying (s).
    pub seconds: f64,
}

impl ClassReport {
    fn share(c: &[usize], per_class: usize) -> f64 {
        c.iter().sum::<usize>() as f64 / (c.len() * per_class).max(1) as f64
    }
    /// Class consistency of the float samples.
    pub fn float_consistency(&self) -> f64 {
        Self::share(&self.float_correct, self.per_class)
    }
    /// Class consistency of the int8 samples.
    pub fn int8_consistency(&self) -> f64 {
        Self::share(&self.int8_correct, self.per_class)
    }
}

/// Samples `per_class` images of every class with both models (seeds `s + 1000·class` for
/// `s < per_class`, as `host/examples/tradeoff.rs`; the float model's stored sampling defaults,
/// without refinement, for both) and scores them with `clf`: class consistency (classifier
/// argmax = intended class) of each, and Fréchet distances of the classifier's 128-d features.
pub fn class_report(
    f: &Model<'_>,
    q: &Model<'_>,
    clf: &crate::classifier::Classifier,
    per_class: usize,
    par: &dyn Parallel,
) -> Result<ClassReport, QuantReportError> {
    use crate::classifier::{argmax, frechet_distance};
    check_shapes(f, q)?;
    let classes = f.config.var.num_classes as usize;
    if clf.classes() != classes {
        return Err(QuantReportError::Mismatch(format!(
            "the classifier has {} classes, the model {classes}",
            clf.classes()
        )));
    }
    let side = f.config.image_side();
    if side != crate::classifier::SIDE {
        return Err(QuantReportError::Mismatch(format!(
            "the classifier takes {0}x{0} images, the model makes {side}x{side}",
            crate::classifier::SIDE
        )));
    }
    if per_class < 2 {
        return Err(QuantReportError::Input(
            "--per-class needs at least 2 samples per class (the split-half yardstick)".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    let vocab = f.config.vae.vocab_size as usize;
    let mut out = ClassReport {
        per_class,
        float_correct: vec![0; classes],
        int8_correct: vec![0; classes],
        ..ClassReport::default()
    };
    // Features by model (0 float, 1 int8) and seed parity.
    let mut feats: [[Vec<Vec<f32>>; 2]; 2] = Default::default();
    let fe = |e: crate::classifier::ClassifierError| QuantReportError::Input(e.to_string());
    for label in 0..classes {
        for s in 0..per_class {
            let d = SampleOptions::for_model(f, label as u32);
            let opts = SampleOptions {
                seed: s as u64 + 1000 * label as u64,
                refine: 0,
                top_k: d.top_k.min(vocab as u32),
                ..d
            };
            for (m, model) in [f, q].into_iter().enumerate() {
                let r = run(model, opts, None, None, true, par)?;
                let rgb: Vec<u8> = r
                    .image
                    .iter()
                    .map(|v| srdd_core::vae::to_rgb8(*v))
                    .collect();
                let (feat, logits) = clf.forward(&rgb).map_err(fe)?;
                if argmax(&logits) == label {
                    [&mut out.float_correct, &mut out.int8_correct][m][label] += 1;
                }
                feats[m][s % 2].push(feat);
            }
        }
    }
    let fd = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        frechet_distance(a, b).map_err(|e| QuantReportError::Input(e.to_string()))
    };
    let all = |m: usize| [feats[m][0].clone(), feats[m][1].clone()].concat();
    out.fd_int8_float = fd(&all(1), &all(0))?;
    out.fd_float_halves = fd(&feats[0][0], &feats[0][1])?;
    out.fd_int8_even_float_odd = fd(&feats[1][0], &feats[0][1])?;
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The class report as JSON (the `classes` entry of `--json`), with the model's class names.
pub fn class_json(c: &ClassReport, names: &[String]) -> Value {
    json!({
        "classifier": c.classifier,
        "per_class": c.per_class,
        "float_consistency": num(c.float_consistency()),
        "int8_consistency": num(c.int8_consistency()),
        "per_class_consistency": names.iter().enumerate().map(|(k, n)| json!({
            "class": n,
            "float": num(c.float_correct[k] as f64 / c.per_class as f64),
            "int8": num(c.int8_correct[k] as f64 / c.per_class as f64),
        })).collect::<Vec<_>>(),
        "frechet_int8_vs_float": num(c.fd_int8_float),
        "frechet_float_even_vs_odd": num(c.fd_float_halves),
        "frechet_int8_even_vs_float_odd": num(c.fd_int8_even_float_odd),
        "seconds": num(c.seconds),
    })
}

/// The class report as text lines.
pub fn class_text(c: &ClassReport, names: &[String]) -> String {
    let mut s = format!(
        "\nclass consistency ({} samples per class, classifier {}): float {:.3}, int8 {:.3}\n",
        c.per_class,
        c.classifier,
        c.float_consistency(),
        c.int8_consistency()
    );
    for (k, n) in names.iter().enumerate() {
        s += &format!(
            "  {:<12} float {:>3}/{}  int8 {:>3}/{}\n",
            n, c.float_correct[k], c.per_class, c.int8_correct[k], c.per_class
        );
    }
    s += &format!(
        "Fréchet distance (classifier features, 128-d): int8 vs float (same seeds) {:.3}\n  \
         yardstick, float even seeds vs float odd seeds {:.3}; int8 even vs float odd {:.3}\n\
         ({:.1} s)",
        c.fd_int8_float, c.fd_float_halves, c.fd_int8_even_float_odd, c.seconds
    );
    s
}

/// Class names for the report: the model's `class_names`, else the label numbers.
pub fn class_names(model: &Model<'_>) -> Vec<String> {
    let n = model.config.var.num_classes as usize;
    match model.meta("class_names") {
        Some(v) if v.split(',').count() == n => {
            v.split(',').map(|c| c.trim().to_string()).collect()
        }
        _ => (0..n).map(|k| k.to_string()).collect(),
    }
}

/// The option table as text.
pub fn options_text(calib: usize, rows: &[OptionRow]) -> String {
    let mut s = format!(
        "{calib} calibration images, teacher-forced against f32\n\n{:<22} {:>8} {:>7} {:>9} {:>9} {:>12}  {:<20} {:>8} {:>6}\n",
        "option",
        "forced %",
        "free %",
        "min top1%",
        "KL mean",
        "KL scale max",
        "worst layer SQNR dB",
        "dec PSNR",
        "pk/RMS"
    );
    for r in rows {
        s += &format!(
            "{:<22} {:>8.2} {:>7.2} {:>9.2} {:>9.2e} {:>12.2e}  {:<20} {:>8.1} {:>6}\n",
            r.name,
            100.0 * r.forced,
            100.0 * r.free,
            100.0 * r.min_top1,
            r.kl_mean,
            r.kl_worst_scale,
            format!("{} {:.1}", r.worst_layer, r.worst_layer_sqnr_db),
            r.decoder_psnr_db,
            r.input_peak_to_rms
                .map_or("-".to_string(), |v| format!("{v:.2}")),
        );
    }
    s + "\nKL: mean over every token, and the largest per-scale mean. pk/RMS: mean token \
         max/RMS of the float model's modulated Linear inputs (smoothed or not). \"int8 weights \
         only\": the int8 weights with f32 activations, the bound of any activation-side option."
}

/// The option table as JSON.
pub fn options_json(calib: usize, rows: &[OptionRow]) -> Value {
    json!({
        "calib_images": calib,
        "options": rows.iter().map(|r| json!({
            "option": r.name,
            "forced_token_agreement": num(r.forced),
            "free_token_agreement": num(r.free),
            "min_top1": num(r.min_top1),
            "kl_mean": num(r.kl_mean),
            "kl_worst_scale_mean": num(r.kl_worst_scale),
            "worst_layer": r.worst_layer,
            "worst_layer_sqnr_db": num(r.worst_layer_sqnr_db),
            "decoder_psnr_db": num(r.decoder_psnr_db),
            "input_peak_to_rms": r.input_peak_to_rms.map_or(Value::Null, num),
            "top1_per_scale": r.top1.iter().map(|v| num(*v)).collect::<Vec<_>>(),
            "kl_mean_per_scale": r.kl.iter().map(|v| num(*v)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
