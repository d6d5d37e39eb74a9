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
    s.decode(0, &mut |y, row| rows.push((y, row.to_vec())))?;
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
    let vocab = cf.vae.vocab_size as usize;
    let width = cf.var.embed_dim as usize;
    let steps = Schedule::full(cf).len();
    let classes = cf.var.num_classes.max(1) as usize;
    let mut layers: BTreeMap<(u8, usize), Layer> = BTreeMap::new();
    let mut scales = vec![Scale::default(); steps];
    let (mut dec_psnr, mut free_psnr) = (f64::INFINITY, f64::INFINITY);
    for i in 0..calib {
        let label = (i * classes / calib.max(1)) as u32;
        let d = SampleOptions::new(label);
        // The defaults, with top-k within a small test model's vocabulary.
        let opts = SampleOptions {
            seed: i as u64 + 1,
            refine: 0,
            top_k: d.top_k.min(vocab as u32),
            ..d
        };
        let mut rf = Recorder::default();
        let fl = run(f, opts, None, Some(&mut rf), par)?;
        let mut rq = Recorder::default();
        let qt = run(q, opts, Some(fl.tokens.clone()), Some(&mut rq), par)?;
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
            // Outliers per channel of the residual stream (the logits are not a matmul input).
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
        for (k, s) in scales.iter_mut().enumerate() {
            let (Some(a), Some(b)) = (fl.logits.get(k), qt.logits.get(k)) else {
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
        let (da, db) = (decode(f, &fl.f_hat, par)?, decode(q, &fl.f_hat, par)?);
        dec_psnr = dec_psnr.min(psnr_db(&da, &db));
        let qf = run(q, opts, None, None, par)?;
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
            TensorDType::I8 => {
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

/// One row of `quant-report --compare`: a quantization option and what it keeps of the float
/// model's decisions.
#[derive(Clone, Debug)]
pub struct OptionRow {
    /// The option (`int8`, `int8 + smooth a=0.5`).
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
         max/RMS of the float model's modulated Linear inputs (smoothed or not)."
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
