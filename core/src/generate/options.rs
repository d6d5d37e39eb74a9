//! Options of a sampling run: the per-step settings table, guidance schedules, and the defaults a
//! model stores in its metadata.

use crate::config::{Attention, ModelConfig, MAX_SCALES};
use crate::error::{Error, Result};
use crate::var::DEFAULT_CHUNK;
use crate::{Model, MAX_CFG};

/// How classifier-free guidance weights each scale (a [`StepTable`] gives any other table).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Guidance {
    /// No guidance and no null-class row (teacher forcing, or plain conditional sampling).
    Off,
    /// Official ramp: `t = cfg · k / (steps − 1)`.
    Linear,
    /// `t = cfg` at every step.
    Constant,
}

/// Sampling settings of one step: one row of the sampling plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    /// Guidance weight `t`: logits `(1 + t)·cond − t·uncond`.
    pub guidance: f32,
    /// Logit temperature.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Nucleus mass (0: off).
    pub top_p: f32,
    /// Refinement passes after the step's first draw (ignored on the first step, whose input is
    /// the class token, not `f_hat`).
    pub refine: u8,
}

/// An explicit per-step table of settings (one row per schedule step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTable {
    /// Rows; only the first `len` are used.
    pub rows: [StepSettings; MAX_SCALES],
    /// Number of rows (must equal the schedule's steps).
    pub len: usize,
}

impl StepTable {
    /// A table of `len` rows, each `row`.
    pub fn filled(row: StepSettings, len: usize) -> StepTable {
        StepTable {
            rows: [row; MAX_SCALES],
            len: len.min(MAX_SCALES),
        }
    }
}

/// Options of one sampling run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Class label; `num_classes` is the null class.
    pub label: u32,
    /// Guidance strength.
    pub cfg: f32,
    /// Guidance schedule.
    pub guidance: Guidance,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Nucleus mass (0: off).
    pub top_p: f32,
    /// Logit temperature.
    pub temperature: f32,
    /// RNG seed.
    pub seed: u64,
    /// Attention policy.
    pub attention: Attention,
    /// Refinement passes on every step after the first.
    pub refine: u8,
    /// Per-step settings; when present they replace `cfg`/`guidance`/`top_k`/`top_p`/
    /// `temperature`/`refine` step by step.
    pub table: Option<StepTable>,
    /// Tokens per FFN / head chunk, per CFG row (0: the default, 256); every row's chunk goes
    /// through a block's weights together. Results do not depend on it; smaller chunks need
    /// fewer arena bytes, and 1 also runs the rows through the blocks one at a time (smallest
    /// arena, slowest).
    pub chunk: u16,
    /// Decode in bands of this many image rows (0: the whole image at once). Results do not
    /// depend on it; bands need far fewer arena bytes and take longer (one pass per banded
    /// GroupNorm).
    pub band_rows: u16,
}

impl SampleOptions {
    /// The official defaults for `label`: cfg 1.5 on the linear ramp, top-k 900, top-p 0.96,
    /// Markovian attention, no refinement.
    pub fn new(label: u32) -> Self {
        SampleOptions {
            label,
            cfg: 1.5,
            guidance: Guidance::Linear,
            top_k: 900,
            top_p: 0.96,
            temperature: 1.0,
            seed: 0,
            attention: Attention::Markov,
            refine: 0,
            table: None,
            chunk: 0,
            band_rows: 0,
        }
    }

    /// The options a model asks for: its stored sampling defaults (metadata `default_cfg`,
    /// `default_top_k`, `default_top_p`), else the official ones, with top-k at most the
    /// vocabulary. Every front end (CLI, firmware, benches, display) starts here, so the same
    /// class and seed give the same image everywhere. Metadata values that do not parse or are
    /// out of range are ignored ([`Model::from_bytes`] and `srdd-tools pack` refuse them; a
    /// `Model` built by hand may still hold them).
    pub fn for_model(model: &Model<'_>, label: u32) -> Self {
        let cfg = &model.config;
        let meta = |k: &str| {
            model
                .meta(k)
                .and_then(|v| v.trim().parse::<f32>().ok())
                .filter(|v| v.is_finite())
        };
        let mut o = SampleOptions::new(label);
        if let Some(v) = meta("default_cfg").filter(|v| (0.0..=MAX_CFG).contains(v)) {
            o.cfg = v;
        }
        if o.cfg == 0.0 {
            o.guidance = Guidance::Off;
        }
        let vocab = cfg.vae.vocab_size;
        o.top_k = meta("default_top_k")
            .filter(|v| *v >= 0.0 && *v <= vocab as f32)
            .map_or(o.top_k, |v| v as u32)
            .min(vocab);
        if let Some(v) = meta("default_top_p").filter(|v| (0.0..=1.0).contains(v)) {
            o.top_p = v;
        }
        o.attention = cfg.attention;
        o
    }

    /// [`SampleOptions::for_model`] with the smallest arena (see [`SampleOptions::low_memory`]).
    pub fn for_model_low_memory(model: &Model<'_>, label: u32) -> Self {
        SampleOptions {
            chunk: 1,
            band_rows: 1,
            ..SampleOptions::for_model(model, label)
        }
    }

    /// [`SampleOptions::new`] with the smallest arena: one-token chunks and a decoder that
    /// works one image row at a time (same results, slower; what the firmware uses).
    pub fn low_memory(label: u32) -> Self {
        SampleOptions {
            chunk: 1,
            band_rows: 1,
            ..SampleOptions::new(label)
        }
    }

    /// Checks ranges against the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if self.label > cfg.var.num_classes {
            return Err(Error::ClassOutOfRange {
                label: self.label,
                num_classes: cfg.var.num_classes,
            });
        }
        if !(self.cfg.is_finite() && (0.0..=MAX_CFG).contains(&self.cfg)) {
            return Err(Error::BadOption("cfg must be a finite value in [0, 1000]"));
        }
        let row = StepSettings {
            guidance: 0.0,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            refine: self.refine,
        };
        check_row(&row, cfg)?;
        if self.band_rows as usize > cfg.image_side() {
            return Err(Error::BadOption("band rows exceed the image height"));
        }
        if let Some(t) = &self.table {
            if t.len == 0 || t.len > MAX_SCALES {
                return Err(Error::BadOption("the step table is empty or too long"));
            }
            for r in &t.rows[..t.len] {
                if !(r.guidance.is_finite() && (-1000.0..=1000.0).contains(&r.guidance)) {
                    return Err(Error::BadOption(
                        "a guidance weight must be a finite value in [-1000, 1000]",
                    ));
                }
                check_row(r, cfg)?;
            }
        }
        Ok(())
    }

    pub(crate) fn rows(&self) -> usize {
        let table_guides = self
            .table
            .is_some_and(|t| t.rows[..t.len].iter().any(|r| r.guidance != 0.0));
        match (self.guidance, table_guides) {
            (Guidance::Off, false) => 1,
            _ => 2,
        }
    }

    pub(crate) fn chunk_tokens(&self) -> usize {
        if self.chunk == 0 {
            DEFAULT_CHUNK
        } else {
            self.chunk as usize
        }
    }

    /// Guidance weight `t` of step `k` of `steps`.
    pub fn guidance_at(&self, k: usize, steps: usize) -> f64 {
        if let Some(t) = &self.table {
            return t.rows.get(k).map_or(0.0, |r| r.guidance as f64);
        }
        match self.guidance {
            Guidance::Off => 0.0,
            Guidance::Constant => self.cfg as f64,
            Guidance::Linear => {
                let ratio = if steps > 1 {
                    k as f64 / (steps - 1) as f64
                } else {
                    0.0
                };
                self.cfg as f64 * ratio
            }
        }
    }

    /// The settings of step `k` of `steps`: the table's row, or the global values.
    pub fn settings(&self, k: usize, steps: usize) -> StepSettings {
        let mut s = match &self.table {
            Some(t) => t.rows[k.min(MAX_SCALES - 1)],
            None => StepSettings {
                guidance: 0.0,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                refine: self.refine,
            },
        };
        s.guidance = self.guidance_at(k, steps) as f32;
        if k == 0 {
            s.refine = 0;
        }
        s
    }

    pub(crate) fn any_refine(&self) -> bool {
        match &self.table {
            Some(t) => t.rows[1.min(t.len)..t.len].iter().any(|r| r.refine > 0),
            None => self.refine > 0,
        }
    }
}

fn check_row(r: &StepSettings, cfg: &ModelConfig) -> Result<()> {
    if r.top_k > cfg.vae.vocab_size {
        return Err(Error::BadOption("top-k exceeds the vocabulary size"));
    }
    if !(r.top_p.is_finite() && (0.0..=1.0).contains(&r.top_p)) {
        return Err(Error::BadOption("top-p must be in [0, 1]"));
    }
    if !(r.temperature.is_finite() && r.temperature > 0.0) {
        return Err(Error::BadOption("temperature must be finite and > 0"));
    }
    if r.refine > MAX_REFINE {
        return Err(Error::BadOption("at most 16 refinement passes per step"));
    }
    Ok(())
}

/// Most refinement passes one step may ask for.
pub const MAX_REFINE: u8 = 16;
