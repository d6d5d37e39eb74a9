//! Outlier smoothing of the AdaLN-modulated Linear inputs (SmoothQuant, issue #12 deliverable 2),
//! folded into the weights when a file is packed.
//!
//! Three Linears of VAR read a modulated LayerNorm, `y = LN(x)·(1 + scale) + shift`:
//! `mat_qkv` (scale1/shift1 of the block's `ada_lin`), `ffn.fc1` (scale2/shift2) and `head`
//! (`head_nm.ada_lin`'s scale/shift). Dividing channel `j` of `y` by `s_j` and multiplying
//! column `j` of the consumer's weight by `s_j` changes nothing in real arithmetic, and the
//! division folds into the `ada_lin` rows that make `scale_j` and `shift_j`:
//!
//! ```text
//! scale row j:  W /= s_j,  b' = (b + 1)/s_j − 1      (so 1 + scale' = (1 + scale)/s_j)
//! shift row j:  W /= s_j,  b' = b/s_j
//! consumer:     W[:, j] *= s_j
//! ```
//!
//! With `s_j = max|X_j|^α / max|W_j|^(1−α)` (`X_j`: channel `j` of the input over calibration
//! samples of the float model, `W_j`: column `j` of the consumer weight) the channels that carry
//! outliers shrink before the int8 kernel quantizes each token row with one scale, and their
//! weight columns grow (quantized per output row).
//!
//! Shared AdaLN (`shared_ada_lin`, d30/d36-style): one AdaLN output feeds every block (plus a
//! per-block constant `ada_gss`), so a per-block division cannot be folded; only the head's input
//! is smoothed there.

use crate::checkpoint::TensorStore;
use crate::convert::{pack, ConvertError, PackOptions};
use srdd_core::aligned::AlignedBytes;
use srdd_core::config::{ModelConfig, WeightFormat};
use srdd_core::forward::{Probe, TensorId};
use srdd_core::generate::{Compute, NoHook, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::resample::{FixedFraction, ResamplePolicy};
use srdd_core::{Model, Schedule};

/// SmoothQuant's default migration strength.
pub const DEFAULT_ALPHA: f32 = 0.5;
/// Calibration images of `pack --smooth` when `--calib` is not given.
pub const DEFAULT_CALIB: usize = 16;
/// Factors are clamped to `[1/S_LIMIT, S_LIMIT]`: a dead channel or column must not produce an
/// extreme factor, and `(b + 1)/s − 1` loses f32 precision as `s` grows.
pub const S_LIMIT: f32 = 1e3;

/// Index of each AdaLN vector in a block's `6C` `ada_lin` output (official order `gamma1,
/// gamma2, scale1, scale2, shift1, shift2`; `core/src/var.rs`).
const SCALE1: usize = 2;
const SCALE2: usize = 3;
const SHIFT1: usize = 4;
const SHIFT2: usize = 5;

/// Why smoothing cannot be computed or applied (one line each).
#[derive(Debug, thiserror::Error)]
pub enum SmoothError {
    /// α outside `[0, 1]` or not a number.
    #[error("--smooth {0}: alpha must be a number in [0, 1]")]
    Alpha(String),
    /// No calibration images.
    #[error("--calib {0}: smoothing needs at least one calibration image")]
    Calib(usize),
    /// Packing the float model for calibration failed.
    #[error("{0}")]
    Convert(#[from] ConvertError),
    /// The engine refused the calibration run.
    #[error("engine: {0}")]
    Core(#[from] srdd_core::Error),
    /// A consumer weight is missing from the checkpoint.
    #[error("smoothing: {0}")]
    Weights(String),
}

/// Parses `--smooth`'s α.
pub fn parse_alpha(text: &str) -> Result<f32, SmoothError> {
    match text.trim().parse::<f32>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(a),
        _ => Err(SmoothError::Alpha(text.to_string())),
    }
}

/// Per-channel statistics of one modulated input over the calibration runs.
#[derive(Clone, Debug, Default)]
pub struct InputStats {
    /// max |x| of each channel.
    pub amax: Vec<f32>,
    /// Σ over tokens of max|x_t| / RMS(x_t) (what a per-token-row int8 scale pays).
    peak_rms_sum: f64,
    /// Tokens seen.
    pub tokens: usize,
}

impl InputStats {
    fn add(&mut self, data: &[f32], c: usize) {
        if self.amax.len() != c {
            self.amax = vec![0.0; c];
        }
        for row in data.chunks_exact(c) {
            let (mut peak, mut sq) = (0f32, 0f64);
            for (m, x) in self.amax.iter_mut().zip(row) {
                *m = m.max(x.abs());
                peak = peak.max(x.abs());
                sq += (*x as f64) * (*x as f64);
            }
            let rms = (sq / c as f64).sqrt();
            if rms > 0.0 {
                self.peak_rms_sum += peak as f64 / rms;
            }
            self.tokens += 1;
        }
    }

    /// Mean over tokens of max|x_t| / RMS(x_t): the token row's int8 step relative to its
    /// typical value (√C at most; 1 for a flat row).
    pub fn peak_to_rms(&self) -> f64 {
        self.peak_rms_sum / self.tokens.max(1) as f64
    }
}

/// Statistics of every modulated input: `mat_qkv` and `ffn.fc1` of each block, and `head`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Per block.
    pub qkv: Vec<InputStats>,
    /// Per block.
    pub fc1: Vec<InputStats>,
    /// The head's input.
    pub head: InputStats,
    c: usize,
}

impl Stats {
    /// Mean of [`InputStats::peak_to_rms`] over every observed input.
    pub fn mean_peak_to_rms(&self) -> f64 {
        let all: Vec<f64> = self
            .qkv
            .iter()
            .chain(&self.fc1)
            .chain([&self.head])
            .filter(|s| s.tokens > 0)
            .map(InputStats::peak_to_rms)
            .collect();
        all.iter().sum::<f64>() / all.len().max(1) as f64
    }
}

impl Probe for Stats {
    fn tensor(&mut self, id: TensorId, data: &[f32]) {
        let c = self.c;
        let s = match id.op {
            "qkv_in" => self.qkv.get_mut(id.layer),
            "fc1_in" => self.fc1.get_mut(id.layer),
            "head_in" => Some(&mut self.head),
            _ => None,
        };
        if let Some(s) = s {
            s.add(data, c);
        }
    }
    fn linear_inputs(&self) -> bool {
        true
    }
}

/// The calibration image `i` of `n` (quant-report's convention): class `i·classes/n`, seed
/// `i + 1`, the model's default sampling without refinement, top-k within the vocabulary.
pub fn calib_options(cfg: &ModelConfig, i: usize, n: usize) -> SampleOptions {
    let classes = cfg.var.num_classes.max(1) as usize;
    let d = SampleOptions::new((i * classes / n.max(1)) as u32);
    SampleOptions {
        seed: i as u64 + 1,
        refine: 0,
        top_k: d.top_k.min(cfg.vae.vocab_size),
        ..d
    }
}

/// Samples `n` calibration images with `model`, observing every modulated input (every row:
/// conditional and unconditional branches go through the same weights).
pub fn collect(model: &Model<'_>, n: usize, par: &dyn Parallel) -> Result<Stats, SmoothError> {
    let depth = model.config.var.depth as usize;
    let mut stats = Stats {
        qkv: vec![InputStats::default(); depth],
        fc1: vec![InputStats::default(); depth],
        head: InputStats::default(),
        c: model.config.var.embed_dim as usize,
    };
    for i in 0..n {
        let opts = calib_options(&model.config, i, n);
        let sched = Schedule::full(&model.config);
        let plan = Plan::batch(&model.config, &opts, &sched, 1, Compute::Cpu)?;
        let mut ab = AlignedBytes::zeroed(plan.arena_bytes());
        let mut s = Sampler::cpu(model, opts, sched, 1, ab.as_bytes_mut(), par)?;
        // Refinement is off; the policy is never asked.
        let mut policy = FixedFraction { fraction: 0.0 };
        while !s.finished() {
            let mut h: [&mut dyn StepHook; 1] = [&mut NoHook];
            let mut p: [&mut dyn ResamplePolicy; 1] = [&mut policy];
            s.step_probed(&mut h, &mut p, &mut stats)?;
        }
    }
    Ok(stats)
}

/// The smoothing factors of a model, folded in by the pack writer ([`PackOptions::smooth`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Smoothing {
    /// Migration strength α.
    pub alpha: f32,
    /// Per block: the factors of `mat_qkv`'s input and of `ffn.fc1`'s input (empty with shared
    /// AdaLN: nothing is folded into the blocks).
    pub blocks: Vec<[Vec<f32>; 2]>,
    /// Factors of `head`'s input.
    pub head: Vec<f32>,
}

/// `s_j = amax_j^α / wmax_j^(1−α)`, 1 for a dead channel or column, clamped to the limits.
pub fn factors(amax: &[f32], wmax: &[f32], alpha: f32) -> Vec<f32> {
    amax.iter()
        .zip(wmax)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 && a.is_finite() && w.is_finite() {
                let s = (a as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
                (s as f32).clamp(1.0 / S_LIMIT, S_LIMIT)
            } else {
                1.0
            }
        })
        .collect()
}

/// max |W[:, j]| of a `[rows, cols]` weight, per column.
fn column_max(w: &[f32], cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; cols];
    for row in w.chunks_exact(cols) {
        for (m, v) in m.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    m
}

/// What a tensor of the file needs (by canonical name).
enum Fold<'s> {
    /// A consumer weight: columns times the factors.
    Columns(&'s [f32]),
    /// An `ada_lin` weight or bias: for each `(vector index, is a scale, factors)`, that
    /// vector's rows (or biases) divided.
    Rows(Vec<(usize, bool, &'s [f32])>, bool),
}

/// What the factors are computed from, for any α: the float model's input statistics and the
/// consumer weights' column maxima.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Statistics of the modulated inputs of the plain float model.
    pub stats: Stats,
    /// Per block, max |W[:, j]| of `mat_qkv` and `ffn.fc1` (empty with shared AdaLN).
    wmax_blocks: Vec<[Vec<f32>; 2]>,
    /// max |W[:, j]| of `head`.
    wmax_head: Vec<f32>,
}

impl Calibration {
    /// Packs the model in `var`/`vae` (with `opts`, any weight format) as f32 in memory,
    /// samples `calib` images ([`calib_options`]) and reads the consumer weights from `var`.
    pub fn measure<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
        var: &V,
        vae: &A,
        opts: &PackOptions,
        calib: usize,
        par: &dyn Parallel,
    ) -> Result<Calibration, SmoothError> {
        if calib == 0 {
            return Err(SmoothError::Calib(calib));
        }
        let f32_opts = PackOptions {
            weights: WeightFormat::F32,
            encoder: false,
            keep: Vec::new(),
            smooth: None,
            ..opts.clone()
        };
        let bytes = AlignedBytes::new(&pack(var, vae, &f32_opts)?);
        let model = Model::from_bytes(bytes.as_bytes())?;
        let stats = collect(&model, calib, par)?;
        let cfg = &model.config;
        let c = cfg.var.embed_dim as usize;
        let wmax = |key: &str| -> Result<Vec<f32>, SmoothError> {
            let t = var
                .load_tensor(key)
                .map_err(ConvertError::from)?
                .ok_or_else(|| SmoothError::Weights(format!("no {key} in the VAR checkpoint")))?;
            Ok(column_max(&t.to_f32().map_err(ConvertError::from)?, c))
        };
        let mut wmax_blocks = Vec::new();
        if !cfg.var.shared_aln {
            for i in 0..cfg.var.depth as usize {
                wmax_blocks.push([
                    wmax(&format!("blocks.{i}.attn.mat_qkv.weight"))?,
                    wmax(&format!("blocks.{i}.ffn.fc1.weight"))?,
                ]);
            }
        }
        Ok(Calibration {
            stats,
            wmax_blocks,
            wmax_head: wmax("head.weight")?,
        })
    }

    /// The factors for migration strength `alpha`.
    pub fn smoothing(&self, alpha: f32) -> Result<Smoothing, SmoothError> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(SmoothError::Alpha(alpha.to_string()));
        }
        let st = &self.stats;
        Ok(Smoothing {
            alpha,
            blocks: self
                .wmax_blocks
                .iter()
                .enumerate()
                .map(|(i, [q, f])| {
                    [
                        factors(&st.qkv[i].amax, q, alpha),
                        factors(&st.fc1[i].amax, f, alpha),
                    ]
                })
                .collect(),
            head: factors(&st.head.amax, &self.wmax_head, alpha),
        })
    }
}

impl Smoothing {
    /// [`Calibration::measure`] then [`Calibration::smoothing`]; also returns the statistics.
    pub fn calibrate<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
        var: &V,
        vae: &A,
        opts: &PackOptions,
        alpha: f32,
        calib: usize,
        par: &dyn Parallel,
    ) -> Result<(Smoothing, Stats), SmoothError> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(SmoothError::Alpha(alpha.to_string()));
        }
        let c = Calibration::measure(var, vae, opts, calib, par)?;
        Ok((c.smoothing(alpha)?, c.stats))
    }

    /// Whether the factors fit a model with `cfg` (checked before a file is written).
    pub fn check(&self, cfg: &ModelConfig) -> Result<(), String> {
        let c = cfg.var.embed_dim as usize;
        if cfg.var.shared_aln && !self.blocks.is_empty() {
            return Err(format!(
                "alpha {}: the model has shared AdaLN (shared_ada_lin feeds every block), so per-block factors cannot be folded; only the head can be smoothed",
                self.alpha
            ));
        }
        if !cfg.var.shared_aln && self.blocks.len() != cfg.var.depth as usize {
            return Err(format!(
                "factors for {} blocks, the model has {}",
                self.blocks.len(),
                cfg.var.depth
            ));
        }
        let bad = self.head.len() != c
            || self.blocks.iter().flatten().any(|s| s.len() != c)
            || self
                .blocks
                .iter()
                .flatten()
                .chain([&self.head])
                .flatten()
                .any(|s| !(s.is_finite() && *s > 0.0));
        if bad {
            return Err(format!(
                "factors must be {c} finite positive numbers per input"
            ));
        }
        Ok(())
    }

    /// A note for the user when the blocks are left alone.
    pub fn note(&self) -> Option<&'static str> {
        self.blocks.is_empty().then_some(
            "shared AdaLN: one shared_ada_lin output feeds every block, so the blocks' inputs are not smoothed (no per-block fold exists); only head's input is",
        )
    }

    fn fold(&self, name: &str) -> Option<Fold<'_>> {
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (i, rest) = rest.split_once('.')?;
            let [q, f] = self.blocks.get(i.parse::<usize>().ok()?)?;
            let rows = |bias| {
                Fold::Rows(
                    vec![
                        (SCALE1, true, &q[..]),
                        (SHIFT1, false, &q[..]),
                        (SCALE2, true, &f[..]),
                        (SHIFT2, false, &f[..]),
                    ],
                    bias,
                )
            };
            return match rest {
                "attn.mat_qkv.weight" => Some(Fold::Columns(q)),
                "ffn.fc1.weight" => Some(Fold::Columns(f)),
                "ada_lin.1.weight" => Some(rows(false)),
                "ada_lin.1.bias" => Some(rows(true)),
                _ => None,
            };
        }
        let h = &self.head[..];
        match name {
            "head.weight" => Some(Fold::Columns(h)),
            "head_nm.ada_lin.1.weight" => {
                Some(Fold::Rows(vec![(0, true, h), (1, false, h)], false))
            }
            "head_nm.ada_lin.1.bias" => Some(Fold::Rows(vec![(0, true, h), (1, false, h)], true)),
            _ => None,
        }
    }

    /// Whether tensor `name` (canonical) changes.
    pub fn touches(&self, name: &str) -> bool {
        self.fold(name).is_some()
    }

    /// Folds the factors into tensor `name`'s values (official row-major layout); leaves any
    /// other tensor alone.
    pub fn apply(&self, name: &str, values: &mut [f32]) {
        match self.fold(name) {
            None => {}
            Some(Fold::Columns(s)) => {
                for row in values.chunks_exact_mut(s.len()) {
                    for (v, s) in row.iter_mut().zip(s) {
                        *v *= *s;
                    }
                }
            }
            Some(Fold::Rows(parts, bias)) => {
                let c = parts[0].2.len();
                // A weight row has `C` inputs; a bias "row" is one value.
                let width = if bias {
                    1
                } else {
                    values.len() / self.out_rows(name, c)
                };
                for (k, is_scale, s) in parts {
                    for (j, s) in s.iter().enumerate() {
                        let row = &mut values[(k * c + j) * width..(k * c + j + 1) * width];
                        for v in row {
                            // In f64: (b + 1)/s − 1 cancels when s is large.
                            *v = if bias && is_scale {
                                ((*v as f64 + 1.0) / *s as f64 - 1.0) as f32
                            } else {
                                (*v as f64 / *s as f64) as f32
                            };
                        }
                    }
                }
            }
        }
    }

    /// Output rows of an `ada_lin` (`6C` for a block, `2C` for the head).
    fn out_rows(&self, name: &str, c: usize) -> usize {
        if name.starts_with("head_nm.") {
            2 * c
        } else {
            6 * c
        }
    }
}
